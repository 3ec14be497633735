"""Configs that cannot drift: every named config's docstring runs as written, and says what to
expect with a number that is in the RESULTS file it names; ``mcjax.config`` loads without JAX;
every config key has a meaning (``python -m launch.model_info --keys``)."""

import functools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from mcjax import config as mcconfig
from mcjax import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = ("Command:", "Hardware:", "Expected:")
# Fixtures of the tests and CI: their metrics are not meaningful at their size, so their
# "Expected" line names what they produce instead of a RESULTS number.
FIXTURES = ("smoke", "tiny")


def _leaves(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


KEYS = frozenset(_leaves(mcconfig.default_config().to_dict()))


def docstring_sections(text: str) -> dict[str, str]:
  """{"Command:": text, "Hardware:": ..., "Expected:": ...} of a config docstring: each header
  line and the indented lines under it, up to the next header or a blank line."""
  out, current = {}, None
  for line in text.splitlines():
    header = next((h for h in HEADERS if line.startswith(h)), None)
    if header:
      current = header
      out[header] = line[len(header):].strip()
    elif current and line.startswith(" ") and line.strip():
      out[current] += "\n" + line.strip()
    else:
      current = None
  return out


def commands(text: str) -> list[tuple[str, list[str]]]:
  """(module, flags) of each ``python -m MODULE --flag ...`` in a Command section; a
  trailing backslash continues the command on the next line."""
  out = []
  for line in text.replace("\\\n", " ").splitlines():
    at = line.find("python -m ")
    if at < 0:
      continue
    words = shlex.split(line[at:])[2:]
    module, flags = words[0], []
    for w in words[1:]:
      if not w.startswith("--"):
        break
      flags.append(w)
    out.append((module, flags))
  return out


@functools.lru_cache(maxsize=None)
def launcher_flags(module: str) -> dict[str, bool]:
  """{flag name: is boolean} that ``python -m module`` defines (absl's own flags included;
  a program that defines its flags when it runs, in ``define_flags()``, is asked to), read in
  a subprocess: each launcher owns absl's global flag registry."""
  code = ("import importlib, json, sys\nfrom absl import flags\n"
          "m = importlib.import_module(sys.argv[1])\n"
          "getattr(m, 'define_flags', lambda: None)()\n"
          "print(json.dumps({n: bool(flags.FLAGS[n].boolean) for n in flags.FLAGS}))")
  r = subprocess.run([sys.executable, "-c", code, module], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def check_command(module: str, flags: list[str]) -> list[str]:
  """What is wrong with ``python -m module flags``: unknown flags, unknown config keys, missing
  config files or unknown named configs (one line each; empty when it runs as written)."""
  known = launcher_flags(module)
  errors = []
  for flag in flags:
    name, _, value = flag[2:].partition("=")
    if name.startswith("config."):
      if "config" not in known:
        errors.append(f"{module} takes no --config overrides ({flag})")
      elif name[len("config."):] not in KEYS:
        errors.append(f"{flag}: no config key {name[len('config.'):]!r}")
    elif name == "config" and value.endswith(".py"):
      if not os.path.exists(os.path.join(ROOT, value)):
        errors.append(f"{flag}: no such file")
    elif name == "configs":
      errors += [f"{flag}: no named config {c!r}" for c in value.split(",")
                 if c not in configs.names()]
    elif name not in known and not (name.startswith("no") and known.get(name[2:])):
      errors.append(f"{module} has no flag --{name}")
  return errors


def _doc(name: str) -> str:
  return open(configs.path(name)).read().split('"""')[1]


def test_the_checker_catches_a_flag_the_launcher_lacks():
  """The old dlrm docstring's command: ``launch.bench`` has no --batch_size (the batch is
  ``--config.train.batch_size``)."""
  old = ("python -m launch.bench --config=mcjax/configs/dlrm.py --batch_size=4096\n"
         "(throughput, beside MLPerf DLRM per-chip rates)")
  (module, flags), = commands(old)
  assert check_command(module, flags) == ["launch.bench has no flag --batch_size"]
  assert check_command("launch.train", ["--config.train.batch_sizes=8", "--novalidate"]) == [
      "--config.train.batch_sizes=8: no config key 'train.batch_sizes'"]


@pytest.mark.parametrize("name", configs.names())
def test_docstring_command_runs_as_written(name):
  sections = docstring_sections(_doc(name))
  assert set(sections) == set(HEADERS), f"{name}: needs {HEADERS}, has {sorted(sections)}"
  found = commands(sections["Command:"])
  assert found, f"{name}: no `python -m` command in its Command section"
  for module, flags in found:
    assert check_command(module, flags) == [], f"{name}: {module} {flags}"


def _section_text(path: str, title: str) -> str | None:
  """The lines under the first heading of ``path`` that starts with ``title``, up to the next
  heading; None when there is no such heading."""
  lines, inside, fence = [], False, False
  for line in open(os.path.join(ROOT, path)):
    fence ^= line.startswith("```")
    if line.startswith("#") and not fence:
      if inside:
        break
      inside = line.lstrip("#").strip().startswith(title)
      continue
    if inside:
      lines.append(line)
  return "".join(lines) if inside or lines else None


CITATION = re.compile(r'\(([\w/]+RESULTS\.md), "([^"]+)"\)')
NUMBER = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)?(?![\w.])")


@pytest.mark.parametrize("name", [n for n in configs.names() if n not in FIXTURES])
def test_expected_line_quotes_its_results_section(name):
  expected = docstring_sections(_doc(name))["Expected:"].replace("\n", " ")
  cited = CITATION.findall(expected)
  assert cited, f'{name}: "Expected" names no (RESULTS file, "section"): {expected!r}'
  numbers = NUMBER.findall(CITATION.sub("", expected))
  assert numbers, f"{name}: the Expected line gives no number: {expected!r}"
  texts = []
  for path, title in cited:
    text = _section_text(path, title)
    assert text is not None, f'{name}: {path} has no section "{title}"'
    texts.append(text)
  for n in numbers:
    assert any(n in t for t in texts), f"{name}: {n} is not in {cited}"


def test_config_loads_without_jax():
  code = ("import sys, mcjax.config as c\nc.validate(c.load_config('full'))\n"
          "heavy = [m for m in ('jax', 'flax', 'optax', 'grain') if m in sys.modules]\n"
          "assert not heavy, heavy")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]


def test_every_key_has_a_meaning_and_model_info_lists_them():
  described = mcconfig.describe_keys()
  assert {k for k, _, _ in described} == KEYS
  assert [k for k, _, doc in described if not doc] == []
  r = subprocess.run([sys.executable, "-m", "launch.model_info", "--keys"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert len(lines) == len(KEYS)
  assert "train.batch_size = 256  # global training batch (split over the mesh's \"data\" " \
         "axis)" in lines
