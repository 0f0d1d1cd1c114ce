"""A digits classifier: a 64-128-64-10 ReLU MLP built from layers, trained with the fold.

Run:  python examples/digits_mlp.py
"""

import numpy as np

from tinyfn import datasets, layers, optim, random, train


def main(seed=0, epochs=30):
    x, y = datasets.digits()
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x, y)
    x_train, x_test = datasets.standardize(x_train, x_test)

    model = layers.serial(layers.Dense(128), layers.Relu(), layers.Dense(64), layers.Relu(), layers.Dense(10))
    print(layers.summary(model, (-1, 64)))
    optimizer = optim.sgd(0.05)
    state = train.init_train_state(model, optimizer, random.key(seed + 1), (-1, 64))
    state, history = train.train_epochs(
        train.supervised_step(model, optimizer),
        state,
        datasets.batches(random.key(seed + 2), x_train, y_train, batch_size=32),
        epochs=epochs,
        # validation on the test split is for display only here: nothing is selected by it
        validate=lambda s: train.evaluate(train.predictor(model, s), [(x_test, y_test)]),
    )
    accuracy = train.evaluate(train.predictor(model, state), [(x_test, y_test)])["accuracy"]
    print(f"seed {seed}: test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
