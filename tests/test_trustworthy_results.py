"""Results a user can trust: the seed reaches the initial weights, resumes keep the schedule and
metrics.jsonl, minibatch groups do not depend on the devices, exploding runs are reported."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssgan_jax import config as config_lib
from ssgan_jax.training import metrics_record, train
from ssgan_jax.config import Config, ConfigError
from test_main import listing
from test_train import MNIST_INFO, tiny_config


def test_the_seed_reaches_the_initial_weights_of_both_players():
  images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8)
  states = [train.create_train_state(train.Setup.create(Config(seed=seed, batch_size=16),
                                                        MNIST_INFO), images)
            for seed in (0, 1)]
  for field in ('disc_params', 'gen_params'):
    a, b = (jax.tree.leaves(getattr(s, field)) for s in states)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b)), field


@pytest.mark.parametrize('saved_steps,new_steps,step,refused', [
    (300, 600, 250, True),    # the decay (from step 200) has begun: a longer run moves it
    (300, 600, 200, False),   # no step taken decayed, under either length
    (300, 330, 210, True),    # 330 steps would start the decay at 220, yet 200..209 decayed
    (300, 360, 190, False),   # both decays start after step 190
    (300, 200, 150, True),    # a shorter run starts its decay at 133 < 150
])
def test_a_resume_that_moves_the_decay_under_steps_taken_is_refused(saved_steps, new_steps, step,
                                                                     refused):
  config = Config(num_steps=new_steps, lr_decay_fraction=1 / 3)
  saved = {'num_steps': saved_steps, 'lr_decay_fraction': 1 / 3}
  if refused:
    with pytest.raises(ConfigError, match=f'^--num_steps={new_steps}: .*--lr_decay_fraction'):
      config_lib.check_schedule_kept(saved, config, step)
  else:
    config_lib.check_schedule_kept(saved, config, step)
  # The rates of the steps taken are the same exactly where the resume is allowed.
  rates = [train.learning_rate_schedule(c)(np.arange(step))
           for c in (config.replace(num_steps=saved_steps), config)]
  assert np.array_equal(*rates) != refused


def test_a_constant_rate_run_may_be_extended():
  config_lib.check_schedule_kept({'num_steps': 300}, Config(num_steps=900), 300)


def test_a_resume_that_changes_the_fitted_average_is_refused():
  """--ema_horizon ties the average's decay to --num_steps: a resume may change either only
  where the decay stays the same."""
  fitted = Config(num_steps=900, ema_decay=0.999, ema_horizon=0.1)
  with pytest.raises(ConfigError, match=r'^--num_steps=900: .*decay 0\.966667 '
                     r'\(--num_steps=300, --ema_horizon=0\.1\).*keep --num_steps=300'):
    config_lib.check_schedule_kept({'num_steps': 300, 'ema_horizon': 0.1}, fitted, 300)
  with pytest.raises(ConfigError, match=r'^--ema_horizon=0\.1: .*keep --ema_horizon=0\.0'):
    config_lib.check_schedule_kept({'num_steps': 900}, fitted, 300)
  # Where --ema_decay is the shorter horizon either way, nothing changes: a run saved before
  # the flag existed resumes with the flagfile's --ema_horizon, and may be extended.
  config_lib.check_schedule_kept({'num_steps': 300_000}, Config(num_steps=400_000,
                                                                 ema_horizon=0.1), 300)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 4-step mock-data run, then the same command again: (workdir, summaries)."""
  workdir = tmp_path_factory.mktemp('finished')
  config = tiny_config(lr_decay_fraction=0.5)
  with tfds.testing.mock_data(num_examples=200):
    summaries = [train.train_and_evaluate(config, str(workdir)) for _ in range(2)]
  return workdir, config, summaries


def records(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_rerunning_a_finished_run_writes_no_metric_twice_and_totals_the_wall_time(finished):
  workdir, _, (first, again) = finished
  written = [(r['step'], key) for r in records(workdir) for key in r if key != 'step']
  assert len(written) == len(set(written)), written
  assert sum('test_accuracy' in r for r in records(workdir)) == 1
  assert again['test_accuracy'] == first['test_accuracy']
  assert first['wall_seconds_total'] == pytest.approx(first['wall_seconds'], abs=0.1)
  assert again['wall_seconds_total'] == pytest.approx(
      first['wall_seconds_total'] + again['wall_seconds'], abs=0.1)


def test_raising_num_steps_after_the_decay_began_is_refused_and_changes_nothing(finished):
  workdir, config, _ = finished
  before = listing(workdir)
  with tfds.testing.mock_data(num_examples=200):
    with pytest.raises(ConfigError, match='^--num_steps=8: .*--lr_decay_fraction=0.5'):
      train.train_and_evaluate(config.replace(num_steps=8), str(workdir))
  assert listing(workdir) == before


def test_unreadable_metric_lines_are_skipped_with_one_warning(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1, "disc_loss": 1.0, "train_seconds_total": 5.0}\n\xff\xfe garbled\n'
                   b'{"step": 2, "disc_loss": 0.5}\n'
                   b'{"step": 2, "test_accuracy": 0.3, "wall_seconds_total": 7.0}\n{"st')
  with pytest.MonkeyPatch.context() as patch:
    warnings = []
    patch.setattr(metrics_record.logging, 'warning', lambda *a: warnings.append(a))
    assert metrics_record.keep_records_up_to(str(path), 2, num_steps=2) == 7.0
  assert len(warnings) == 1 and warnings[0][2] == 1
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {'step': 1, 'disc_loss': 1.0, 'train_seconds_total': 5.0}, {'step': 2, 'disc_loss': 0.5}]


def test_minibatch_group_size_is_the_first_runs_per_device_batch_and_then_the_saved_one():
  config = Config(minibatch_kernels=3, batch_size=16, eval_batch_size=32)
  assert config_lib.with_group_size(config, 4, None).minibatch_group_size == 4
  assert config_lib.with_group_size(config, 1, {'minibatch_group_size': 4}).minibatch_group_size == 4
  assert config_lib.with_group_size(config.replace(minibatch_kernels=0), 4, None) == \
      config.replace(minibatch_kernels=0)
  with pytest.raises(ConfigError, match=r'^--minibatch_group_size=8: must divide each device'):
    config_lib.check_divisible_by_devices(config.replace(minibatch_group_size=8), 4)
  with pytest.raises(ConfigError, match=r'^--batch_size=16: must be a multiple of '
                     '--minibatch_group_size=5'):
    config_lib.validate(config.replace(minibatch_group_size=5))


def test_an_exploding_loss_and_accuracy_at_chance_are_warned_about():
  watch = train.DivergenceWatch(num_classes=10)
  watch.check_metrics(10, {'disc_loss': 3.0, 'gen_loss': 0.1})
  watch.check_metrics(20, {'disc_loss': 300.0, 'gen_loss': 0.1})
  assert not watch.warnings  # a hundredfold is not yet an explosion
  watch.check_metrics(30, {'disc_loss': 2e10, 'gen_loss': 0.1})
  [warning] = watch.warnings
  assert 'step 30 disc_loss=2e+10' in warning and '--learning_rate' in warning
  watch.check_accuracy('test_accuracy', 0.5)
  assert len(watch.warnings) == 1
  watch.check_accuracy('test_accuracy', 0.103)
  assert 'test_accuracy 0.1030 is at chance' in watch.warnings[-1]


def test_divergence_before_any_checkpoint_says_there_is_none(tmp_path):
  config = tiny_config(learning_rate=1e20, num_steps=4, checkpoint_every=4, log_every=2)
  with tfds.testing.mock_data(num_examples=200):
    with pytest.raises(train.NonFiniteLossError, match='no checkpoint was saved before it'):
      train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()
