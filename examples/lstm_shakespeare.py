"""A character-level LSTM on Shakespeare: read 64 characters, predict each next one.

The model is Embedding(62, 64) -> LSTM(128) -> Dense(62) over the 62 characters of the text
(the speeches of nine plays, 1.15 M characters; the last 10% held out for validation). Each
training step takes 32 windows of 64 characters at random positions of the training text,
and Adam (learning rate 2e-3, cosine-decayed to 2e-4, gradients clipped to norm 1) lowers the
mean cross-entropy of the next character. The validation loss is in nats per character
(ln 62 = 4.13 for a uniform guess): the whole validation text read as 32 streams, each carrying
the LSTM's state from one window to the next, so every character but the first few is
predicted from all the text before it in its stream.

Run:  python examples/lstm_shakespeare.py [OUT_FOLDER] [--steps N] [--seed S]
Prints the losses as training goes, the final validation loss and a sample of generated text,
and draws the loss curves into OUT_FOLDER/lstm-shakespeare.png (default runs/lstm-shakespeare/).
The figure in docs/ is `python examples/lstm_shakespeare.py docs`.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np

import tinyfn
from tinyfn import datasets, layers, losses, ops, optim, random


def load_text(split: str) -> str:
    """``"train"`` (the first 90%) or ``"validation"`` (the last 10%) of the shipped text."""
    return datasets.shakespeare(split)


class CharModel:
    """Characters to next-character logits: ids (batch, T) -> (batch, T, vocab), with the
    LSTM's state ``(h, c)`` passed in and out so that text can be read in pieces."""

    def __init__(self, alphabet: str, embedding: int = 64, hidden: int = 128):
        self.alphabet = alphabet
        self.index = {ch: i for i, ch in enumerate(alphabet)}
        self.embed = layers.Embedding(len(alphabet), embedding)
        self.lstm = layers.LSTM(hidden, return_state=True)
        self.head = layers.Dense(len(alphabet))
        self.sizes = (embedding, hidden)

    def init(self, key) -> dict:
        embedding, hidden = self.sizes
        k_embed, k_lstm, k_head = random.split(key, 3)
        return {
            "embed": self.embed.init(k_embed, (-1, -1))[1],
            "lstm": self.lstm.init(k_lstm, (-1, -1, embedding))[1],
            "head": self.head.init(k_head, (-1, -1, hidden))[1],
        }

    def __call__(self, params, ids, carry=None) -> tuple:
        ys, carry = self.lstm.apply(params["lstm"], self.embed.apply(params["embed"], ids), carry=carry)
        return self.head.apply(params["head"], ys), carry

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in ids)


def windows(key, ids: np.ndarray, batch: int, length: int) -> np.ndarray:
    """``batch`` windows of ``length + 1`` characters at random positions of ``ids``."""
    starts = random.randint(key, (batch,), 0, len(ids) - length)
    return ids[starts[:, None] + np.arange(length + 1)]


def validation_loss(model, params, ids: np.ndarray, streams: int = 32, chunk: int = 256) -> float:
    """Mean cross-entropy (nats per character) of predicting each character of ``ids`` from
    the ones before it: ``ids`` cut into ``streams`` consecutive pieces, read ``chunk``
    characters at a time with the LSTM's state carried over."""
    per_stream = (len(ids) - 1) // streams
    inputs = ids[: streams * per_stream].reshape(streams, per_stream)
    targets = ids[1 : streams * per_stream + 1].reshape(streams, per_stream)
    total, carry = 0.0, None
    for start in range(0, per_stream, chunk):
        logits, carry = model(params, inputs[:, start : start + chunk], carry)
        total += float(losses.softmax_cross_entropy(logits, targets[:, start : start + chunk], reduction="sum"))
    return total / targets.size


def sample(model, params, key, prompt: str, length: int, temperature: float = 0.8) -> str:
    """``prompt`` and ``length`` characters drawn one at a time from the model's predictions
    (softmax of the logits divided by ``temperature``)."""
    logits, carry = model(params, model.encode(prompt)[None])
    drawn = []
    for k in random.split(key, length):
        p = np.exp(ops.log_softmax(logits[0, -1].astype(np.float64) / temperature))
        drawn.append(int(random.choice(k, len(p), 1, p=p / p.sum())[0]))
        logits, carry = model(params, np.array([[drawn[-1]]]), carry)
    return prompt + model.decode(drawn)


def train(model, params, train_ids, validation_ids, steps: int, key, batch=32, length=64, evaluate_every=250):
    """Adam on random windows; returns the params and the history ``[(step, train loss,
    validation loss on the first 16k validation characters)]``, one entry per evaluation."""
    optimizer = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(optim.schedules.cosine_decay(2e-3, steps, alpha=0.1)))
    state = optimizer.init(params)

    def loss(params, text):
        return losses.softmax_cross_entropy(model(params, text[:, :-1])[0], text[:, 1:])

    loss_and_grad = tinyfn.value_and_grad(loss)
    history, recent = [], []
    for step, k in enumerate(random.split(key, steps), start=1):
        value, grads = loss_and_grad(params, windows(k, train_ids, batch, length))
        updates, state = optimizer.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        recent.append(float(value))
        if step % evaluate_every == 0 or step == steps:
            history.append((step, float(np.mean(recent)), validation_loss(model, params, validation_ids[:16384])))
            recent = []
            print(f"step {step:5d}  train {history[-1][1]:.3f}  validation {history[-1][2]:.3f} nats/char")
    return params, history


def plot(history, final: float, path: Path) -> Path:
    """The training and validation losses against the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    steps, train_losses, validation_losses = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, train_losses, label="training (mean since the last point)")
    ax.plot(steps, validation_losses, label="validation (first 16k characters)")
    ax.axhline(math.log(62), color="gray", linewidth=0.5, linestyle="--", label="uniform guess, ln 62")
    ax.set_xlabel("step (32 windows of 64 characters)")
    ax.set_ylabel("nats per character")
    ax.set_title(f"Character LSTM on Shakespeare: {final:.3f} nats/char on the whole validation text", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(out=Path("runs/lstm-shakespeare"), steps=2500, seed=0, hidden=128, evaluate_every=250) -> dict:
    """Train, evaluate, sample and draw; returns the final validation loss, the history,
    the sample and the training time."""
    train_text, validation_text = load_text("train"), load_text("validation")
    model = CharModel("".join(sorted(set(train_text + validation_text))), hidden=hidden)
    init_key, train_key, sample_key = random.split(random.key(seed), 3)
    start = time.perf_counter()
    params, history = train(model, model.init(init_key), model.encode(train_text), model.encode(validation_text), steps, train_key, evaluate_every=evaluate_every)
    seconds = time.perf_counter() - start
    final = validation_loss(model, params, model.encode(validation_text))
    print(f"validation loss {final:.3f} nats/char ({final / math.log(2):.2f} bits) after {steps} steps ({seconds:.0f} s of training)")
    text = sample(model, params, sample_key, "HAMLET:\n", 400)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot(history, final, out / 'lstm-shakespeare.png')}")
    return {"validation_loss": final, "history": history, "sample": text, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/lstm-shakespeare"), help="folder for lstm-shakespeare.png")
    parser.add_argument("--steps", type=int, default=2500, help="training steps (default %(default)s: about 2 minutes on one core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.out, args.steps, args.seed)
