"""MixUp and CutMix (trainer.mixup): soft targets, CutMix's lambda, torchvision's definitions,
seeded draws, label smoothing on mixed targets, the training accuracy, and a run that trains
and resumes exactly."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from torchvision.transforms import v2

from cnntrain import Callback, resume, train
from cnntrain.build import build_training
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.data import ImageSet
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.data.mixing import BatchMixer, beta, box_weight, cutmix_box, mix
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.trainer import _RunningStats
from tests.conftest import compose_config

CLASSES = 5


def batch(n=8, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g), torch.randint(CLASSES, (n,), generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def one_hot(labels):
    return F.one_hot(labels, CLASSES).float()


def test_mixup_targets_sum_to_one_and_mix_the_pair_by_lambda():
    x, y = batch()
    mixer = BatchMixer(CLASSES, alpha=0.4)
    weight, lam, perm = mixer.draw(x, gen(3))
    images, targets = mixer(x, y, gen(3))  # the same draws again
    assert weight.shape == () and 0 < lam < 1 and torch.equal(weight, lam)
    assert sorted(perm.tolist()) == list(range(len(x)))
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(x)))
    assert torch.allclose(targets, lam * one_hot(y) + (1 - lam) * one_hot(y[perm]))
    assert torch.allclose(images, lam * x + (1 - lam) * x[perm])


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_lambda_is_the_kept_share_of_the_box_actually_pasted(seed):
    x, y = batch(size=20)
    mixer = BatchMixer(CLASSES, cutmix_alpha=1.0)
    images, targets = mixer(x, y, gen(seed))
    weight, lam, perm = mixer.draw(x, gen(seed))
    assert set(weight.unique().tolist()) <= {0.0, 1.0}  # (H, W): 0 where the partner's pixels are pasted
    assert torch.equal(images, torch.where(weight == 0, x[perm], x))
    rows, cols = (weight == 0).nonzero(as_tuple=True)
    if len(rows):  # the pasted pixels form one rectangle
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert lam == pytest.approx(1 - len(rows) / 400)
    assert torch.allclose(targets, lam * one_hot(y) + (1 - lam) * one_hot(y[perm]))
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(x)))


def test_cutmix_box_is_clipped_at_the_image_border_and_lambda_follows():
    generator = gen(0)
    lam = torch.tensor(0.0)  # the box's half sides are half the image: clipped wherever its centre is
    top, bottom, left, right = cutmix_box(lam, generator, 10, 10)
    weight, kept = box_weight((top, bottom, left, right), 10, 10, "cpu")
    assert 0 <= top < bottom <= 10 and 0 <= left < right <= 10
    assert kept == pytest.approx(1 - (bottom - top) * (right - left) / 100) == pytest.approx(weight.mean())


@pytest.mark.parametrize("seed", range(5))
def test_the_definitions_are_torchvisions_when_seeded_the_same_way(seed):
    """torchvision draws from the global generator and pairs image i with image i-1 (roll): with the
    generator seeded alike and that pairing, ours gives the same images and targets."""
    x, y = batch(n=6, size=24, seed=seed)
    roll = torch.arange(6).roll(1)

    torch.manual_seed(seed)
    tv_images, tv_targets = v2.MixUp(alpha=0.4, num_classes=CLASSES)(x, y)
    generator = gen(seed)
    lam = beta(0.4, generator)
    images, targets = mix(x, one_hot(y), lam, lam, roll)
    assert torch.equal(images, tv_images) and torch.allclose(targets, tv_targets)

    torch.manual_seed(seed)
    tv_images, tv_targets = v2.CutMix(alpha=1.0, num_classes=CLASSES)(x, y)
    generator = gen(seed)
    weight, kept = box_weight(cutmix_box(beta(1.0, generator), generator, 24, 24), 24, 24, "cpu")
    images, targets = mix(x, one_hot(y), weight, kept, roll)
    assert torch.equal(images, tv_images) and torch.allclose(targets, tv_targets)


def test_draws_are_seeded_and_an_off_batch_is_unchanged():
    x, y = batch()
    mixer = BatchMixer(CLASSES, alpha=0.2, cutmix_alpha=1.0)
    first, again, other = mixer(x, y, gen(1)), mixer(x, y, gen(1)), mixer(x, y, gen(2))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    images, targets = BatchMixer(CLASSES, alpha=0.2, cutmix_alpha=1.0, prob=0.0)(x, y, gen(1))
    assert torch.equal(images, x) and torch.equal(targets, one_hot(y))


def test_switch_prob_chooses_cutmix_or_mixup():
    x, _ = batch()
    for seed in range(5):
        cutmix, _, _ = BatchMixer(CLASSES, alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0).draw(x, gen(seed))
        assert set(cutmix.unique().tolist()) <= {0.0, 1.0}
        mixup, lam, _ = BatchMixer(CLASSES, alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0).draw(x, gen(seed))
        assert torch.all(mixup == lam) and 0 < lam < 1


def test_beta_off_cpu_and_cuda_draws_through_a_seeded_cpu_generator(monkeypatch):
    """mps samples no Dirichlet with a generator: one number of it seeds a CPU generator instead."""
    from cnntrain.data import mixing

    monkeypatch.setattr(mixing, "_DIRICHLET_DEVICES", ())
    assert beta(0.3, gen(4)) == beta(0.3, gen(4)) != beta(0.3, gen(5))
    assert 0 <= beta(0.3, gen(4)) <= 1


def test_label_smoothing_smooths_the_mixed_targets_as_timm_does():
    """timm's mixup_target smooths each one-hot (off = e / C, on = 1 - e + off) and then mixes them;
    F.cross_entropy's label_smoothing on the mixed target is the same loss."""
    cfg = compose_config(
        ["experiment=smoke", "trainer.label_smoothing=0.1", "trainer.mixup.alpha=0.4", "trainer.mixup.cutmix_alpha=1.0"]
    )
    parts = build_training(check_config(cfg))
    loss_fn = parts.trainer().loss_fn
    images, targets = next(iter(parts.train_loader))
    assert targets.shape == (len(images), parts.spec.num_classes)
    x, y = batch(n=8)
    logits = torch.randn(8, CLASSES, generator=gen(9))
    lam, perm, e = 0.3, torch.arange(8).roll(3), 0.1
    off, on = e / CLASSES, 1 - e + e / CLASSES
    timm_target = lam * (one_hot(y) * (on - off) + off) + (1 - lam) * (one_hot(y[perm]) * (on - off) + off)
    timm_loss = (-timm_target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    _, soft = mix(x, one_hot(y), torch.tensor(lam), torch.tensor(lam), perm)
    assert loss_fn(logits, soft) == pytest.approx(timm_loss.item(), rel=1e-6)


def test_training_accuracy_counts_the_larger_share_of_the_mixed_target():
    stats = _RunningStats(torch.device("cpu"))
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8], [0.4, 0.6, 0.0]])
    logits = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # predicts 0, 0, 1
    stats.add(logits, targets, torch.tensor(1.0))
    assert stats.read() == (1.0, pytest.approx(2 / 3))


def test_the_training_loader_mixes_from_its_stream_and_a_resumed_pass_continues_it():
    images = (batch(n=20, c=1, size=8)[0] * 255).to(torch.uint8)
    data = ImageSet(images, torch.arange(20) % CLASSES)
    transform = BatchTransform(None, None, None)  # no augmentations: the mixer alone needs the stream
    mixer = BatchMixer(CLASSES, alpha=0.3, cutmix_alpha=1.0)

    def loader():
        made = InMemoryLoader(data, 4, transform, torch.device("cpu"), shuffle=True, seed=7, augment=True, mixer=mixer)
        made.set_epoch(2)
        return made

    whole, states = [], []
    first = loader()
    for x, targets in first:
        whole.append((x, targets))
        states.append(first.generator.get_state())
    assert all(targets.shape == (4, CLASSES) for _, targets in whole)
    assert any(not torch.equal(targets, targets.round()) for _, targets in whole)  # some targets are mixed
    again = loader()
    again.resume_at(2, states[1])  # as a checkpoint taken after the second batch has it
    for (x, targets), (x2, targets2) in zip(whole[2:], again, strict=True):
        assert torch.equal(x, x2) and torch.equal(targets, targets2)
    evaluation = InMemoryLoader(data, 4, transform, torch.device("cpu"), mixer=mixer)
    _, labels = next(iter(evaluation))
    assert labels.dim() == 1  # validation and test are never mixed


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "trainer.mixup.alpha=-1",
            "trainer.mixup.alpha must be a number >= 0 (MixUp's Beta(alpha, alpha); 0: no "
            "MixUp; 0.2 to 1 are usual), got -1.",
        ),
        ("trainer.mixup.cutmix_alpha=abc", "trainer.mixup.cutmix_alpha must be a number >= 0"),
        ("trainer.mixup.alpha=true", "trainer.mixup.alpha must be a number >= 0"),
        (
            "trainer.mixup.prob=1.5",
            "trainer.mixup.prob must be a number from 0 to 1 (the share of training batches mixed), got 1.5.",
        ),
        ("trainer.mixup.switch_prob=-0.1", "trainer.mixup.switch_prob must be a number from 0 to 1"),
        ("trainer.mixup=abc", "trainer.mixup must be a section such as {alpha: 0.2,"),
    ],
)
def test_bad_mixup_settings_are_named(setting, message):
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(["experiment=smoke", setting]))
    assert message in str(err.value)


def test_an_unknown_mixup_key_from_python_or_a_config_file_is_named():
    """On the command line Hydra's struct mode refuses trainer.mixup.alph (cnntrain's own message names
    it first); a config built in Python or a user's config file reaches the check."""
    cfg = compose_config(["experiment=smoke"])
    with open_dict(cfg):
        cfg.trainer.mixup = {"alph": 0.2}
    with pytest.raises(
        ConfigError,
        match="trainer.mixup has no setting 'alph'. Did you mean 'alpha'[?] It takes "
        "alpha, cutmix_alpha, prob, switch_prob.",
    ):
        check_config(cfg)


def test_mixup_is_off_unless_an_alpha_and_prob_are_above_zero():
    assert check_config(compose_config(["experiment=smoke"])).mixup is None
    assert (
        check_config(compose_config(["experiment=smoke", "trainer.mixup.alpha=0.2", "trainer.mixup.prob=0"])).mixup
        is None
    )
    assert check_config(compose_config(["experiment=smoke", "trainer.mixup={cutmix_alpha:1}"])).mixup == {
        "alpha": 0.0,
        "cutmix_alpha": 1.0,
        "prob": 1.0,
        "switch_prob": 0.5,
    }


MIXED_RUN = [
    "experiment=smoke",
    "trainer.progress=none",
    "trainer.checkpoint_every_minutes=null",
    "data.augment=[hflip,{name:random_erasing,p:0.5}]",
    "trainer.mixup.alpha=0.2",
    "trainer.mixup.cutmix_alpha=1.0",
    "trainer.label_smoothing=0.1",
    "optimizer.momentum=0.9",
]


class StopAt(Callback):
    """Interrupt the run at (epoch, step): what Ctrl-C does at that moment."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_train_step(self, trainer, step, steps):
        if (len(trainer.history) + 1, step) == self.at:
            trainer.request_stop()


def test_a_mixed_run_learns_and_resumes_exactly(tmp_path):
    whole = train(*MIXED_RUN, run_dir=tmp_path / "whole")
    assert len(whole.history) == 3
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in whole.history)
    assert whole.history[-1].val_acc > 2 / 10  # 10 classes: well above chance
    with pytest.raises(RunInterrupted):
        # last.pt saved after every step (written after every callback, StopAt included), so it holds step 5
        train(*MIXED_RUN, "trainer.checkpoint_every_minutes=1e-9", callbacks=[StopAt(2, 5)], run_dir=tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["in_epoch"]["step"] == 5
    resumed = resume(tmp_path / "cut")
    assert [(m.train_loss, m.train_acc, m.val_loss, m.val_acc) for m in resumed.history] == [
        (m.train_loss, m.train_acc, m.val_loss, m.val_acc) for m in whole.history
    ]
    a = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
