"""What every benchmark command shares: how it starts, reports bad input and saves records."""
import ast
import json
import os
import pathlib
import subprocess
import sys

from absl.testing import flagsaver
import pytest

from benchmarks import common_flags, record_files, run_environment
from ssgan_jax.config import ConfigError
from ssgan_jax.networks import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]


def main_block_calls(path: pathlib.Path) -> list[str]:
  """The functions called at the top of a module's `if __name__ == '__main__':` block."""
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
      return [ast.unparse(statement.value.func) for statement in node.body
              if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)]
  return []


def test_every_benchmark_command_starts_from_common_flags_run():
  commands = {path.name: main_block_calls(path) for path in (REPO / 'benchmarks').glob('*.py')}
  commands = {name: calls for name, calls in commands.items() if calls}
  assert len(commands) >= 9, commands
  assert {name: calls[-1] for name, calls in commands.items()} == {
      name: 'common_flags.run' for name in commands}


def run_entry_point(main, *args: str) -> int:
  with pytest.raises(SystemExit) as exit_info:
    common_flags.run(main, ['benchmark', *args])
  return exit_info.value.code


@pytest.mark.parametrize('args,message', [
    (('--no_such_flag=1',), "error: Unknown command line flag 'no_such_flag'"),
    (('stray',), 'error: unexpected arguments: stray'),
    (('--label_seeds=0,one',), "error: flag --label_seeds=['0', 'one']: must be non-negative "
                               'integers, comma-separated'),
    (('--data_npz=/no/such.npz',), 'error: flag --data_npz=/no/such.npz: no such file'),
])
def test_bad_flags_and_stray_arguments_stop_before_main_in_one_line(args, message, capsys,
                                                                    monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')
  called = []
  with flagsaver.flagsaver():
    assert run_entry_point(lambda: called.append(True), *args) == 2
  assert capsys.readouterr().err.splitlines() == [message]
  assert not called


def test_a_config_error_in_main_is_one_line_and_the_kernel_choice_comes_first(capsys,
                                                                              monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')
  seen = []

  def main():
    seen.append(os.environ['XLA_FLAGS'])
    raise ConfigError('steps', 'x', 'must be name:steps pairs')

  with flagsaver.flagsaver():
    assert run_entry_point(main) == 2
  assert capsys.readouterr().err.splitlines() == ['error: --steps=x: must be name:steps pairs']
  assert seen == [xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS]


def test_a_record_is_saved_whole_beside_its_table(tmp_path):
  stem = tmp_path / 'new_folder' / 'bench'
  record_files.save(str(stem), {'runs': [1, 2]}, '| a |\n')
  assert json.loads(stem.with_suffix('.json').read_text()) == {'runs': [1, 2]}
  assert stem.with_suffix('.md').read_text() == '| a |\n'
  record_files.save(str(stem), {'runs': [1, 2, 3]})  # no table: the old one stays
  assert json.loads(stem.with_suffix('.json').read_text()) == {'runs': [1, 2, 3]}
  assert stem.with_suffix('.md').read_text() == '| a |\n'
  assert sorted(p.name for p in stem.parent.iterdir()) == ['bench.json', 'bench.md']


def test_the_recorded_command_is_the_one_to_type(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['/repo/benchmarks/throughput.py', '--steps=3'])
  spec = type('Spec', (), {'name': 'benchmarks.throughput'})()
  monkeypatch.setattr(sys.modules['__main__'], '__spec__', spec, raising=False)
  assert run_environment.command_line() == 'python -m benchmarks.throughput --steps=3'
  monkeypatch.setattr(sys.modules['__main__'], '__spec__', None)
  assert run_environment.command_line() == 'python /repo/benchmarks/throughput.py --steps=3'


def test_export_data_refuses_bad_input_in_one_line_and_keeps_the_old_file(tmp_path):
  out = tmp_path / 'data.npz'
  out.write_bytes(b'an earlier export')
  result = subprocess.run([sys.executable, '-m', 'benchmarks.export_data',
                           '--flagfile=experiments/tiny.flags', '--data_dir=/no/such/dir',
                           f'--out={out}'],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
  assert (result.returncode, result.stderr.strip().splitlines()) == (
      2, ['error: --data_dir=/no/such/dir: must be a readable directory'])
  assert out.read_bytes() == b'an earlier export'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['data.npz']


def test_export_data_writes_only_npz_files(capsys, monkeypatch):
  from benchmarks import export_data  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('XLA_FLAGS', '')
  with flagsaver.flagsaver():
    assert run_entry_point(export_data.main, '--out=/tmp/data.zip') == 2
  assert capsys.readouterr().err.splitlines() == ['error: --out=/tmp/data.zip: must end in .npz']


@pytest.mark.parametrize('args,error', [
    (['--datasets=digits,svhn'], '--steps=digits:1000,mnist:1100: gives no steps for svhn'),
    (['--steps=digits:many'], '--steps=digits:many: must be name:steps pairs, steps >= 1'),
    (['--datasets=digits,no_such'], '--datasets=no_such: no experiments/no_such.flags'),
])
def test_label_selection_checks_its_budgets_before_training(tmp_path, args, error):
  """In a subprocess: its --steps and --data_dir would clash with other benchmarks' flags."""
  result = subprocess.run([sys.executable, '-m', 'benchmarks.label_selection',
                           f'--out_dir={tmp_path}', *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
  assert (result.returncode, result.stderr.strip().splitlines()) == (2, [f'error: {error}'])
  assert list(tmp_path.iterdir()) == []
