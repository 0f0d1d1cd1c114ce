"""The classic PyTorch MNIST example network, in tinyfn, trained on the MNIST IDX files.

conv 3x3 32 - ReLU - conv 3x3 64 - ReLU - max-pool 2 - dropout 0.25 - flatten - dense 128 -
ReLU - dropout 0.5 - dense 10, as in ``pytorch/examples/mnist`` (which trains it with
Adadelta; here it is Adam). It reaches about 99% test accuracy after a couple of epochs.

Download the four MNIST files (``train-images-idx3-ubyte.gz`` and the others; Fashion-MNIST
works too) into a folder, then run:

    python examples/mnist_cnn.py FOLDER [--epochs 2] [--limit 10000]

``--limit`` trains on the first samples only, for a quick look.
"""

import argparse

from tinyfn import datasets, layers, optim, random, train
from tinyfn.tasks import mnist_cnn  # the network, also used by `tinyfn train mnist`


def main(folder, epochs=2, limit=None, seed=0, batch_size=64):
    x_train, y_train, x_test, y_test = datasets.mnist(folder)  # images scaled to [0, 1]
    x_train, y_train = x_train[:limit], y_train[:limit]
    net = mnist_cnn()
    print(layers.summary(net, (-1, 1, 28, 28)))
    optimizer = optim.adam(1e-3)
    state = train.init_train_state(net, optimizer, random.key(seed), (-1, 1, 28, 28))
    test_batches = datasets.batches(None, x_test, y_test, 1000, shuffle=False)

    def evaluate(state):
        return train.evaluate(train.predictor(net, state), test_batches)

    state, _ = train.train_epochs(
        train.supervised_step(net, optimizer),
        state,
        datasets.batches(random.key(seed + 1), x_train, y_train, batch_size=batch_size),
        epochs=epochs,
        validate=evaluate,
    )
    accuracy = evaluate(state)["accuracy"]
    print(f"seed {seed}: test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="folder with the four MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT samples only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.folder, args.epochs, args.limit, args.seed)
