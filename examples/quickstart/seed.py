"""Writes the data the API serves; runs once before the API starts."""
import json
import pathlib

data = {"items": ["tea", "bread", "apples"]}
pathlib.Path(".locald-data.json").write_text(json.dumps(data))
print("seeded", len(data["items"]), "items")
