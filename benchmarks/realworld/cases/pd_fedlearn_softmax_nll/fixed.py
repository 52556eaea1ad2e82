"""Federated-learning baseline, centralised training (AshwinRJ/Federated-Learning-PyTorch:
src/baseline_main.py with --model=mlp, src/models.py MLP), ported to Paddle's high-level API
(paddle.Model.fit).

With the fix proposed in issue #30: the MLP ends in ``nn.LogSoftmax``, the log-probabilities
``paddle.nn.NLLLoss`` expects. MNIST is replaced by scikit-learn's bundled 8x8 digits.
"""
import numpy as np
import paddle
from paddle import nn
from sklearn.datasets import load_digits


class MLP(nn.Layer):
    def __init__(self, dim_in, dim_hidden, dim_out):
        super(MLP, self).__init__()
        self.layer_input = nn.Linear(dim_in, dim_hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout()
        self.layer_hidden = nn.Linear(dim_hidden, dim_out)
        self.softmax = nn.LogSoftmax(axis=1)

    def forward(self, x):
        x = x.reshape([-1, x.shape[1] * x.shape[-2] * x.shape[-1]])
        x = self.layer_input(x)
        x = self.dropout(x)
        x = self.relu(x)
        x = self.layer_hidden(x)
        return self.softmax(x)


def get_dataset():
    """Stand-in for MNIST + ToTensor + Normalize((0.1307,), (0.3081,))."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    images = ((images - images.mean()) / images.std())[:, None]   # N x 1 x 8 x 8
    labels = digits.target.astype(np.int64).reshape(-1, 1)
    return (paddle.io.TensorDataset([paddle.to_tensor(images[:1500]), paddle.to_tensor(labels[:1500])]),
            paddle.io.TensorDataset([paddle.to_tensor(images[1500:]), paddle.to_tensor(labels[1500:])]))


if __name__ == '__main__':
    paddle.seed(1)
    train_dataset, test_dataset = get_dataset()
    global_model = paddle.Model(MLP(dim_in=64, dim_hidden=64, dim_out=10))
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.5, parameters=global_model.parameters())
    global_model.prepare(optimizer, nn.NLLLoss())
    global_model.fit(train_dataset, batch_size=64, epochs=10, shuffle=True, verbose=2)
