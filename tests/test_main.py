"""The command line, run as a user runs it: `python -m ssgan_jax.main --flagfile=...`."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from conftest import devices_env
from ssgan_jax import config as config_lib
from ssgan_jax.command_line import cli
from ssgan_jax.data import input_pipeline
from ssgan_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = REPO / 'experiments' / 'tiny.flags'


def run_main(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, '-m', 'ssgan_jax.main', f'--flagfile={TINY_FLAGS}',
                         *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                        env=env)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith('error: ')]


def listing(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): p.stat().st_mtime_ns
          for p in sorted(directory.rglob('*'))}


# The tiny flagfile, long enough to learn: 100 semi-supervised steps with 100 labels.
SHORT_RUN = ('--num_labeled=100', '--batch_size=50', '--num_steps=100', '--log_every=50',
             '--eval_every=50', '--checkpoint_every=50')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_data_dir):
  workdir = tmp_path_factory.mktemp('tiny_run')
  return workdir, run_main(f'--data_dir={mnist_data_dir}', f'--workdir={workdir}', *SHORT_RUN)


def test_tiny_run_exits_0_and_leaves_checkpoints_and_metrics(trained):
  workdir, result = trained
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['step'] == 100 and summary['wall_seconds'] > 0
  assert summary['test_accuracy'] > 0.6  # chance: 0.1
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['100', '50']
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert {r['step'] for r in records} == {50, 100}
  assert any('validation_accuracy' in r for r in records)
  assert any('disc_loss' in r and 'gen_loss' in r for r in records)
  assert list(workdir.glob('events.out.tfevents.*'))


def test_a_run_prints_no_start_up_notices_of_other_libraries(trained):
  """TensorFlow's C++ notices (absl-prefixed lines such as 'I0000 ... port.cc') and Orbax's
  or clu's informational lines stay off the console unless --verbose."""
  _, result = trained
  assert result.returncode == 0
  for line in result.stderr.splitlines():
    assert not re.match(r'[IWE]\d{4} ', line) and 'absl::InitializeLog' not in line, line
    assert 'oneDNN' not in line and 'parameter_overview' not in line, line


def test_evaluate_on_the_command_line_prints_the_report_and_no_warnings(trained):
  workdir, first = trained
  assert first.returncode == 0
  result = subprocess.run([sys.executable, '-m', 'ssgan_jax.evaluate', f'--workdir={workdir}'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'test accuracy: ' in result.stdout
  assert [line for line in result.stderr.splitlines()
          if line.startswith(('WARNING', 'W0000', 'I0000'))] == []


def test_rerun_with_other_settings_is_refused_and_changes_nothing(trained, mnist_data_dir):
  workdir, first = trained
  assert first.returncode == 0
  before = listing(workdir / 'checkpoints')
  result = run_main(f'--data_dir={mnist_data_dir}', f'--workdir={workdir}', *SHORT_RUN,
                    '--num_labeled=30')
  assert result.returncode == 2
  [line] = error_lines(result)
  assert f'--workdir={workdir}' in line and '--num_labeled: checkpoint 100, now 30' in line
  assert 'Traceback' not in result.stderr
  assert listing(workdir / 'checkpoints') == before


def test_rerun_with_more_steps_resumes_and_keeps_the_newest_checkpoints(trained, mnist_data_dir, tmp_path):
  workdir, first = trained
  assert first.returncode == 0
  resumed = tmp_path / 'resumed'
  subprocess.run(['cp', '-r', str(workdir), str(resumed)], check=True)
  result = run_main(f'--data_dir={mnist_data_dir}', f'--workdir={resumed}', *SHORT_RUN,
                    '--num_steps=110',
                    '--keep_checkpoints=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from step 100' in result.stderr
  assert json.loads(result.stdout.strip().splitlines()[-1])['step'] == 110
  # Only the newest --keep_checkpoints survive.
  assert sorted(p.name for p in (resumed / 'checkpoints').iterdir()) == ['100', '110']


def test_a_truncated_checkpoint_is_refused_in_one_line_and_left_as_it_is(trained, mnist_data_dir,
                                                                          tmp_path):
  workdir, first = trained
  assert first.returncode == 0
  damaged = tmp_path / 'damaged'
  subprocess.run(['cp', '-r', str(workdir), str(damaged)], check=True)
  state = damaged / 'checkpoints' / '100' / 'state'
  largest = max((p for p in state.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  before = listing(damaged)
  result = run_main(f'--data_dir={mnist_data_dir}', f'--workdir={damaged}', *SHORT_RUN)
  assert result.returncode == 2
  [line] = error_lines(result)
  assert f'checkpoint {damaged}/checkpoints/100 cannot be read' in line
  assert 'Traceback' not in result.stderr and 'Event loop is closed' not in result.stderr
  assert listing(damaged) == before


@pytest.mark.parametrize('args,expected', [
    (['--unsup_loss=bogus'], '--unsup_loss=bogus: allowed: salimans, kplus1, two_head'),
    (['--gen_loss=adversarial'], '--gen_loss=adversarial: allowed: '),
    (['--model=resnet'], '--model=resnet: allowed: mlp, conv_small, conv_large'),
    (['--num_steps=-5'], '--num_steps=-5: must be >= 0'),
    (['--learning_rate=0'], '--learning_rate=0.0: must be > 0'),
    (['--no_such_flag=3'], 'no_such_flag'),
    (['--batch_size=abc'], '--batch_size'),
    (['--flagfile=/no/such.flags'], '/no/such.flags'),
    (['--workdir='], '--workdir is required'),
])
def test_bad_flags_exit_2_with_one_line(args, expected, tmp_path):
  workdir = tmp_path / 'run'
  result = run_main(f'--workdir={workdir}', *args)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result)
  assert expected in line
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'checkpoints').exists()


@pytest.mark.parametrize('args,expected', [
    (['--dataset=no_such_dataset_xyz'], '--dataset=no_such_dataset_xyz: not a TFDS dataset'),
    (['--data_dir=/no/such/dir'], '--data_dir=/no/such/dir: must be a readable directory'),
    (['--num_labeled=25'], '--num_labeled=25: must be a multiple of the class count (10)'),
    (['--num_labeled=6000'], '--num_labeled=6000: at most 4800'),
    (['--dataset=mn ist!'], '--dataset=mn ist!: not a TFDS dataset name'),
    (['--dataset=mnist:9.9.9'], '--dataset=mnist:9.9.9: Dataset mnist cannot be loaded at version'),
    # Bytes that are not UTF-8, as a shell's $'\xff' passes them.
    ([os.fsdecode(b'--dataset=\xff')], r'--dataset=\xff: must be UTF-8 text'),
])
def test_bad_settings_for_the_data_are_refused_before_any_image_is_read(args, expected, tmp_path,
                                                                        mnist_data_dir,
                                                                        monkeypatch):
  """In-process, main's path up to the error it reports in one line (exit 2, as below)."""
  def read_images(*_):
    raise AssertionError('images were read')
  monkeypatch.setattr(input_pipeline, 'load', read_images)
  workdir = tmp_path / 'run'
  flag_values = cli.parsed_flags([f'--flagfile={TINY_FLAGS}', f'--data_dir={mnist_data_dir}', *args])
  with pytest.raises(config_lib.ConfigError) as error:
    train.train_and_evaluate(cli.resolved_config(flag_values), str(workdir))
  assert str(error.value).startswith(expected)
  assert not workdir.exists()


def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_tfds_is_asked(
    tmp_path, monkeypatch):
  """Before TFDS starts TensorFlow, which takes seconds."""
  def dataset_info(*_):
    raise AssertionError('TFDS was asked')
  monkeypatch.setattr(input_pipeline, 'dataset_info', dataset_info)
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  config = cli.resolved_config(cli.parsed_flags([f'--flagfile={TINY_FLAGS}', '--batch_size=10']))
  with pytest.raises(config_lib.ConfigError, match=re.escape(
      '--batch_size=10: must be a multiple of the device count (4)')):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('args,expected', [
    (['--batch_size=10'], '--batch_size=10: must be a multiple of the device count (4)'),
    # Refused before anything is loaded, not killed for memory.
    (['--batch_size=1000000000'], '--batch_size=1000000000: needs at least'),
    ([os.fsdecode(b'--workdir=/tmp/run\xff')], r'--workdir=/tmp/run\xff: must be UTF-8 text'),
])
def test_bad_settings_for_the_data_or_devices_exit_2(args, expected, tmp_path, mnist_data_dir):
  workdir = tmp_path / 'run'
  result = run_main(f'--workdir={workdir}', f'--data_dir={mnist_data_dir}', *args,
                    env_extra=devices_env(4))
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result)
  assert expected in line
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'checkpoints').exists()
