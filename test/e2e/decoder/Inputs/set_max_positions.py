"""set_max_positions.py CONFIG N: sets max_position_embeddings in CONFIG."""
import json
import sys

path, n = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    config = json.load(f)
config["max_position_embeddings"] = n
with open(path, "w") as f:
    json.dump(config, f, indent=2)
