"""How every benchmark saves what it measured: STEM.json, the record, beside STEM.md, its
tables. Each file is replaced whole, so a run cut short leaves the last complete one."""
import json
import os
from typing import Optional


def _replace(path: str, text: str) -> None:
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def save(stem: str, record: dict, table: Optional[str] = None) -> None:
  """Writes STEM.json and, given a table, STEM.md; creates STEM's folder."""
  os.makedirs(os.path.dirname(stem) or '.', exist_ok=True)
  _replace(stem + '.json', json.dumps(record, indent=1))
  if table is not None:
    _replace(stem + '.md', table)
