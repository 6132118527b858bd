"""Small helpers shared by the Trainer and the command line."""
