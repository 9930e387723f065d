"""Runs that survive: divergence, kill -9 and SIGTERM, corrupt state, bad launch input, two hosts.

The command-line runs use real signals on real processes; they share one uninterrupted
reference run (1 process, 4 devices).
"""
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssgan_jax.training import checkpointing, metrics_record, multihost, preemption, train
from ssgan_jax import config as config_lib, main as ssgan_main
from ssgan_jax.config import Config, ConfigError
from conftest import devices_env
from test_main import REPO, TINY_FLAGS, error_lines, listing, run_main
from test_train import MNIST_INFO, tiny_config

FOUR_DEVICES = devices_env(4)
NUM_STEPS = 20
MULTIHOST_STEPS = 5


def restored_state(workdir, config: Config, step=None):
  """The state of the newest (or the given) checkpoint in workdir, on the host."""
  checkpointer = checkpointing.Checkpointer(str(workdir), config)
  state = checkpointer.restore(train.state_template(train.Setup.create(config, MNIST_INFO)),
                               step)
  checkpointer.close()
  return state


class Main:
  """`python -m ssgan_jax.main` in the background, its output in files (pipes could fill up)."""

  def __init__(self, log_dir: pathlib.Path, *args, env_extra):
    log_dir.mkdir(parents=True, exist_ok=True)
    self.stdout_path, self.stderr_path = log_dir / 'stdout', log_dir / 'stderr'
    with open(self.stdout_path, 'w') as stdout, open(self.stderr_path, 'w') as stderr:
      self.process = subprocess.Popen(
          [sys.executable, '-m', 'ssgan_jax.main', f'--flagfile={TINY_FLAGS}', *args],
          stdout=stdout, stderr=stderr, cwd=REPO, env={**os.environ, **env_extra})

  def wait_until(self, condition, timeout=300.0, poll=0.002) -> None:
    deadline = time.time() + timeout
    while not condition():
      assert self.process.poll() is None, self.stderr()[-3000:]
      assert time.time() < deadline, 'timed out'
      time.sleep(poll)

  def wait(self) -> int:
    return self.process.wait(timeout=600)

  def stdout(self) -> str:
    return self.stdout_path.read_text()

  def stderr(self) -> str:
    return self.stderr_path.read_text()


def complete_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit())


def logged_steps(workdir) -> list[int]:
  path = workdir / 'metrics.jsonl'
  lines = path.read_text().splitlines() if path.exists() else []
  return [json.loads(line)['step'] for line in lines if line.endswith('}')]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, mnist_data_dir):
  """An uninterrupted CLI run of NUM_STEPS steps on 4 devices: (workdir, config)."""
  workdir = tmp_path_factory.mktemp('reference')
  args = [f'--data_dir={mnist_data_dir}', f'--num_steps={NUM_STEPS}']
  result = run_main(*args, f'--workdir={workdir}', f'--checkpoint_every={MULTIHOST_STEPS}',
                    '--keep_checkpoints=100', env_extra=FOUR_DEVICES)
  assert result.returncode == 0, result.stderr[-3000:]
  config, _ = ssgan_main.parse_config([f'--flagfile={TINY_FLAGS}', *args])
  return workdir, config


def test_kill9_during_a_save_then_resume_ends_like_the_uninterrupted_run(
    reference, mnist_data_dir, tmp_path):
  """(SIGTERM on the command line: the two-process test below.)"""
  reference_dir, config = reference
  workdir = tmp_path / 'run'
  common = [f'--data_dir={mnist_data_dir}', f'--num_steps={NUM_STEPS}', f'--workdir={workdir}']

  # 1. kill -9 while Orbax writes a checkpoint (one per step), after one is complete.
  killed = Main(tmp_path / 'killed', *common, '--checkpoint_every=1', env_extra=FOUR_DEVICES)
  in_flight = lambda: list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))
  killed.wait_until(lambda: complete_steps(workdir) and in_flight())
  killed.process.kill()
  assert killed.wait() == -signal.SIGKILL
  assert in_flight(), 'the kill came after the save ended'  # an incomplete save is left
  resume_from = complete_steps(workdir)[-1]

  # 2. The same command resumes from the newest complete checkpoint and ends with the
  # uninterrupted run's parameters.
  result = run_main(*common, env_extra=FOUR_DEVICES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from step {resume_from}.' in result.stderr
  jax.tree.map(np.testing.assert_array_equal, restored_state(workdir, config),
               restored_state(reference_dir, config))
  # The resumed run dropped the records of the steps it redid, and any line cut short.
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == sorted(r['step'] for r in records)


def two_processes(log_dir: pathlib.Path, *args) -> list[Main]:
  """Two processes of 2 devices each on localhost, running the command line with args."""
  port = free_port()
  return [Main(log_dir / f'process{i}', *args, f'--coordinator_address=localhost:{port}',
               '--num_processes=2', f'--process_id={i}',
               env_extra=devices_env(2))
          for i in range(2)]


def test_two_processes_train_like_one_with_four_devices_and_stop_together_on_sigterm(
    reference, mnist_data_dir, tmp_path):
  """(Resuming is tested on one process, by the kill -9 test above, not on two.)"""
  reference_dir, config = reference
  workdir = tmp_path / 'two_hosts'
  processes = two_processes(
      tmp_path / 'stopped', f'--data_dir={mnist_data_dir}', f'--num_steps={NUM_STEPS}',
      f'--workdir={workdir}', f'--checkpoint_every={MULTIHOST_STEPS}', '--keep_checkpoints=100',
      '--log_every=1')
  processes[0].wait_until(lambda: any(s > MULTIHOST_STEPS for s in logged_steps(workdir)),
                          poll=0.01)
  # A preemption notice may reach one host first; jax's service tells the others.
  processes[1].process.send_signal(signal.SIGTERM)
  for process in processes:
    assert process.wait() == 0, process.stderr()[-3000:]
  stopped = [json.loads(p.stdout().strip().splitlines()[-1]) for p in processes]
  assert stopped[0] == stopped[1] and stopped[0]['stopped'], stopped
  assert MULTIHOST_STEPS < stopped[0]['step'] < NUM_STEPS
  assert complete_steps(workdir) == [MULTIHOST_STEPS, stopped[0]['step']]
  # One process writes the metrics and summaries: two writers would write each record twice.
  records = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert len(records) == len(set(records)) and stopped[0]['step'] in logged_steps(workdir)
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               restored_state(workdir, config, step=MULTIHOST_STEPS),
               restored_state(reference_dir, config, step=MULTIHOST_STEPS))


@pytest.fixture(scope='module')
def diverged(tmp_path_factory):
  """A mock-data run at a learning rate that overflows: (workdir, config, error message)."""
  workdir = tmp_path_factory.mktemp('diverged')
  config = tiny_config(learning_rate=1e15, num_steps=8, checkpoint_every=1, log_every=4)
  with tfds.testing.mock_data(num_examples=200):
    with pytest.raises(train.NonFiniteLossError) as e:
      train.train_and_evaluate(config, str(workdir))
  return workdir, config, str(e.value)


def test_divergence_stops_at_the_first_bad_step_and_the_last_good_checkpoint_restores(diverged):
  workdir, config, message = diverged
  assert re.match(r'training diverged at step \d+: .*disc_loss=', message), message
  bad_step = int(message.split('at step ')[1].split(':')[0])
  assert bad_step > 1 and complete_steps(workdir)[-1] == bad_step - 1
  state = restored_state(workdir, config)
  assert int(state.step) == bad_step - 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  assert not list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))
  assert set(logged_steps(workdir)) == set(range(1, bad_step))  # nothing past the last good


def corrupt_truncate(checkpoint: pathlib.Path) -> None:
  largest = max((p for p in (checkpoint / 'state').rglob('*') if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])


def corrupt_garble_config(checkpoint: pathlib.Path) -> None:
  for path in (checkpoint / 'config').rglob('*'):
    if path.is_file():
      path.write_bytes(b'\x00garbage{')


# After a failed read, callbacks left inside Orbax fire on its closed asyncio loop; pytest
# reports them as unraisable. They come after our error is raised and change nothing here.
AFTER_A_FAILED_READ = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


@AFTER_A_FAILED_READ
@pytest.mark.parametrize('corrupt', [corrupt_truncate, corrupt_garble_config])
def test_unreadable_checkpoint_is_reported_and_left_as_it_is(corrupt, diverged, tmp_path):
  source, config, _ = diverged
  workdir = tmp_path / 'workdir'
  subprocess.run(['cp', '-r', str(source), str(workdir)], check=True)
  newest = complete_steps(workdir)[-1]
  corrupt(workdir / 'checkpoints' / str(newest))
  before = listing(workdir)
  with tfds.testing.mock_data(num_examples=200):
    with pytest.raises(ConfigError,
                       match=f'--workdir={workdir}: checkpoint .*/{newest} cannot be read'):
      train.train_and_evaluate(config, str(workdir))
  assert listing(workdir) == before


@AFTER_A_FAILED_READ
@pytest.mark.parametrize('foreign', [{'mode': 'supervised'}, {'model': 'conv_small'}])
def test_checkpoint_of_another_model_is_refused(foreign, diverged):
  workdir, config, _ = diverged
  other = config.replace(**foreign)
  info = MNIST_INFO if other.model == 'mlp' else dataclasses.replace(MNIST_INFO,
                                                                      image_shape=(32, 32, 3))
  checkpointer = checkpointing.Checkpointer(str(workdir), other)
  with pytest.raises(ConfigError, match='cannot be read'):
    checkpointer.restore(train.state_template(train.Setup.create(other, info)))
  checkpointer.close()


def test_unwritable_workdir_is_refused(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(ConfigError, match='must be a writable directory'):
    checkpointing.check_writable(str(tmp_path / 'file' / 'workdir'))
  if os.geteuid() != 0:  # root writes anywhere
    (tmp_path / 'readonly').mkdir(mode=0o500)
    with pytest.raises(ConfigError, match='must be a writable directory'):
      checkpointing.check_writable(str(tmp_path / 'readonly'))


@pytest.mark.parametrize('launch,expected', [
    (('localhost:1234', 0, 0), '--num_processes=0: must be >= 1'),
    (('localhost:1234', 2, 2), '--process_id=2: must be in [0, 1] (--num_processes=2)'),
    ((None, 2, 0), '--coordinator_address=None: required with --num_processes=2'),
    (('localhost', 2, 0), '--coordinator_address=localhost: must be host:port'),
])
def test_bad_launch_settings(launch, expected):
  with pytest.raises(ConfigError) as e:
    multihost.check_launch(*launch)
  assert expected in str(e.value)


@pytest.mark.parametrize('launch,expected', [
    ((None, None, None), (None, None, None)),  # all detected
    (('10.0.0.1:1234', None, None), ('10.0.0.1:1234', None, None)),
    ((None, 8, 3), (None, 8, 3)),
])
def test_distributed_auto_leaves_to_jax_what_is_not_given(launch, expected, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args: calls.append(args))
  multihost.check_launch(*launch, distributed='auto')
  multihost.initialize(*launch, distributed='auto')
  multihost.initialize('localhost:1', 1, 0)  # explicit, one process: nothing to join
  assert calls == [expected]


@pytest.mark.parametrize('launch,expected', [
    ((None, 0, None, 'auto'), '--num_processes=0: must be >= 1'),
    (('localhost', None, None, 'auto'), '--coordinator_address=localhost: must be host:port'),
    ((None, 1, 0, 'slurm'), '--distributed=slurm: allowed: explicit, auto'),
])
def test_bad_distributed_launch_settings(launch, expected):
  with pytest.raises(ConfigError) as e:
    multihost.check_launch(*launch)
  assert expected in str(e.value)


@pytest.mark.parametrize('changes,expected', [
    ({'seed': -1}, '--seed=-1: must be >= 0'),
    ({'unsup_weight': float('nan')}, '--unsup_weight=nan: must be a finite number'),
    ({'num_steps': 2**31}, '--num_steps=2147483648: must be < 2147483648'),
])
def test_out_of_range_settings(changes, expected):
  with pytest.raises(ConfigError) as e:
    config_lib.validate(Config().replace(**changes))
  assert str(e.value).startswith(expected)


def test_flagfile_with_a_typo_and_bad_launch_flag_exit_2(tmp_path):
  flagfile = tmp_path / 'typo.flags'
  flagfile.write_text('--num_lables=20\n')
  for args, expected in [([f'--flagfile={flagfile}'], 'num_lables'),
                         (['--num_processes=two'], '--num_processes=two: must be an integer')]:
    result = run_main(f'--workdir={tmp_path / "run"}', *args)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = error_lines(result)
    assert expected in line and 'Traceback' not in result.stderr


def test_dataset_neither_prepared_nor_downloadable_fails_fast(tmp_path):
  # A proxy that refuses connections stands for a machine without network.
  empty = tmp_path / 'tfds'
  empty.mkdir()
  started = time.time()
  result = run_main(f'--workdir={tmp_path / "run"}', f'--data_dir={empty}',
                    env_extra={'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'})
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result)
  assert f'--dataset=mnist: is not prepared in {empty}' in line and '--data_dir' in line
  assert time.time() - started < 120  # TFDS alone retries for minutes


def test_sigint_and_sigterm_request_a_stop_once_and_the_handlers_come_back():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  for signum in (signal.SIGINT, signal.SIGTERM):
    with preemption.stop_on_signals() as stop_requested:
      assert not stop_requested(1)
      os.kill(os.getpid(), signum)
      assert stop_requested(2) and stop_requested.signal_name == signum.name
      # A second signal of the kind meets the previous handler (Ctrl-C twice interrupts).
      assert signal.getsignal(signum) is before[signum == signal.SIGTERM]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_resumed_run_drops_the_records_of_the_steps_it_redoes(tmp_path):
  """An extended run keeps the end-of-run record of the step it resumes at (that step's test
  result); it drops every later one."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "disc_loss": 1.0}\n{"step": 2, "disc_loss": 0.5}\n'
                  '{"step": 2, "validation_accuracy": 0.5}\n{"step": 2, "test_accuracy": 0.5}\n'
                  '{"step": 3, "disc_loss": 0.4}\n'
                  '{"step": 4, "disc_lo')  # the last line cut short by kill -9
  metrics_record.keep_records_up_to(str(path), 2, num_steps=4)
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {'step': 1, 'disc_loss': 1.0}, {'step': 2, 'disc_loss': 0.5},
      {'step': 2, 'validation_accuracy': 0.5}, {'step': 2, 'test_accuracy': 0.5}]
