"""The book's LeNet on Fashion-MNIST, as its own code runs it: the reference for lenet_vs_book.py.

This is Dive into Deep Learning's (d2l.ai, PyTorch edition, d2l 1.0.3) LeNet section with the
helpers it calls from the `d2l` package copied here unchanged in what they compute:
load_data_fashion_mnist (torchvision's FashionMNIST with ToTensor, DataLoader with 4 worker
processes), train_ch6 (Xavier-uniform init, SGD lr 0.9, per-step `float()` reads through
Accumulator and accuracy, the Animator's plot updates five times an epoch and after each test
pass), evaluate_accuracy_gpu. The book's code samples are under its modified MIT licence
(github.com/d2l-ai/d2l-en, LICENSE-SAMPLECODE). Changed for measuring only: the data root is an
argument, torch is seeded, each epoch's wall time (training + test pass) is recorded, and a
JSON line with the results is printed last; an epoch's training loop is a function of its own
(`train_epoch_ch6`, which benchmarks/speed.py runs too); the Animator prints nothing (in a terminal the
book's `display` prints the figure's repr) and needs matplotlib, as the book does.

    python benchmarks/book_lenet.py --root <folder with FashionMNIST/raw/> --epochs 10 --seed 0
"""

import argparse
import json
import time

import torch
import torchvision
from torch import nn
from torchvision import transforms


class Timer:
    """Record multiple running times."""

    def __init__(self):
        self.times = []
        self.start()

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)


class Accumulator:
    """For accumulating sums over `n` variables."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, idx):
        return self.data[idx]


class Animator:
    """For plotting data in animation (the book's, drawing into an off-screen figure)."""

    def __init__(
        self,
        xlabel=None,
        ylabel=None,
        legend=None,
        xlim=None,
        ylim=None,
        xscale="linear",
        yscale="linear",
        fmts=("-", "m--", "g-.", "r:"),
        nrows=1,
        ncols=1,
        figsize=(3.5, 2.5),
    ):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        if legend is None:
            legend = []
        self.fig, self.axes = plt.subplots(nrows, ncols, figsize=figsize)
        if nrows * ncols == 1:
            self.axes = [
                self.axes,
            ]
        self.config_axes = lambda: set_axes(self.axes[0], xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
        self.X, self.Y, self.fmts = None, None, fmts

    def add(self, x, y):
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if not self.X:
            self.X = [[] for _ in range(n)]
        if not self.Y:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for x, y, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(x, y, fmt)
        self.config_axes()


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend):
    axes.set_xlabel(xlabel), axes.set_ylabel(ylabel)
    axes.set_xscale(xscale), axes.set_yscale(yscale)
    axes.set_xlim(xlim), axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def accuracy(y_hat, y):
    """Compute the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def load_data_fashion_mnist(batch_size, root, resize=None):
    trans = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    trans = transforms.Compose(trans)
    mnist_train = torchvision.datasets.FashionMNIST(root=root, train=True, transform=trans, download=True)
    mnist_test = torchvision.datasets.FashionMNIST(root=root, train=False, transform=trans, download=True)
    return (
        torch.utils.data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=4),
        torch.utils.data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=4),
    )


def evaluate_accuracy_gpu(net, data_iter, device=None):
    """Compute the accuracy for a model on a dataset using a GPU."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X = X.to(device)
            y = y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def train_epoch_ch6(net, train_iter, optimizer, loss, device, animator, timer, epoch):
    """One epoch of the book's train_ch6 loop, split out of it so that benchmarks/speed.py runs this
    same code; returns (train loss, train accuracy, examples). The one change: the plot is updated
    every max(1, batches // 5) steps, where the book divides by batches // 5 and fails below 5
    batches (speed.py's zoo passes take a few)."""
    metric = Accumulator(3)
    net.train()
    num_batches = len(train_iter)
    for i, (X, y) in enumerate(train_iter):
        timer.start()
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = net(X)
        l = loss(y_hat, y)
        l.backward()
        optimizer.step()
        with torch.no_grad():
            metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
        timer.stop()
        train_l = metric[0] / metric[2]
        train_acc = metric[1] / metric[2]
        if (i + 1) % max(1, num_batches // 5) == 0 or i == num_batches - 1:
            animator.add(epoch + (i + 1) / num_batches, (train_l, train_acc, None))
    return train_l, train_acc, metric[2]


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, epoch_seconds):
    """Train a model with a GPU (the book's; + epoch_seconds, each epoch's wall time)."""

    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    print("training on", device)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    animator = Animator(xlabel="epoch", xlim=[1, num_epochs], legend=["train loss", "train acc", "test acc"])
    timer = Timer()
    for epoch in range(num_epochs):
        started = time.perf_counter()
        train_l, train_acc, examples = train_epoch_ch6(net, train_iter, optimizer, loss, device, animator, timer, epoch)
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        animator.add(epoch + 1, (None, None, test_acc))
        epoch_seconds.append(time.perf_counter() - started)
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    print(f"{examples * num_epochs / timer.sum():.1f} examples/sec on {str(device)}")
    return test_acc, examples * num_epochs / timer.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )
    batch_size = 256
    train_iter, test_iter = load_data_fashion_mnist(batch_size=batch_size, root=args.root)
    lr, num_epochs = 0.9, args.epochs
    epoch_seconds = []
    device = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    test_acc, printed_rate = train_ch6(net, train_iter, test_iter, num_epochs, lr, device, epoch_seconds)
    print(json.dumps({"test_acc": test_acc, "epoch_seconds": epoch_seconds, "printed_examples_per_s": printed_rate}))


if __name__ == "__main__":
    main()
