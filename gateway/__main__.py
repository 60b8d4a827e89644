import sys

from gateway import grpc_env

grpc_env.apply()  # before anything imports grpc

from gateway.cli import main  # noqa: E402

sys.exit(main())
