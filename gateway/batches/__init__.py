"""OpenAI's Files and Batches APIs: uploaded files, and batches of requests run in the background
through the same planning and generate paths as the REST routes, behind interactive traffic."""
