"""Human activity recognition CNN (jindongwang/Deep-learning-activity-recognition, pytorch/),
ported to Paddle's high-level API (paddle.Model.fit).

With the published fix (commit 3b8d960): the network returns the raw scores of its last
linear layer; ``paddle.nn.CrossEntropyLoss`` applies softmax itself. UCI HAR is
replaced by synthetic 9-channel inertial windows (see load()).
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

BATCH_SIZE = 64
N_EPOCH = 6
LEARNING_RATE = 0.01


def load(n_per_class=200, seed=0):
    """Stand-in for UCI HAR: windows of 128 samples x 9 channels (body acc, gyro, total acc),
    six activities, each a mix of per-activity rhythms with random phase, a posture-dependent
    gravity offset on the total-acceleration channels, and sensor noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 50.0                                   # 50 Hz, 2.56 s windows
    freq = rng.uniform(0.5, 3.0, size=(6, 9))
    amp = rng.uniform(0.2, 1.0, size=(6, 9))
    gravity = np.zeros((6, 9))
    gravity[:, 6:] = rng.normal(0.0, 0.6, size=(6, 3))            # posture: total_acc offsets
    xs, ys = [], []
    for label in range(6):
        phase = rng.uniform(0, 2 * np.pi, size=(n_per_class, 9, 1))
        x = amp[label][None, :, None] * np.sin(2 * np.pi * freq[label][None, :, None] * t + phase)
        x = x + gravity[label][None, :, None]
        xs.append(x + 0.3 * rng.standard_normal(x.shape))
        ys.append(np.full(n_per_class, label))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
    order = rng.permutation(len(y))
    x, y = x[order].reshape(-1, 9, 1, 128), y[order].reshape(-1, 1)
    n_train = int(0.8 * len(y))
    return (paddle.io.TensorDataset([paddle.to_tensor(x[:n_train]), paddle.to_tensor(y[:n_train])]),
            paddle.io.TensorDataset([paddle.to_tensor(x[n_train:]), paddle.to_tensor(y[n_train:])]))


class Network(nn.Layer):
    def __init__(self):
        super(Network, self).__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2D(in_channels=9, out_channels=32, kernel_size=(1, 9)),
            nn.ReLU(),
            nn.MaxPool2D(kernel_size=(1, 2), stride=2)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2D(in_channels=32, out_channels=64, kernel_size=(1, 9)),
            nn.ReLU(),
            nn.MaxPool2D(kernel_size=(1, 2), stride=2)
        )
        self.fc1 = nn.Sequential(nn.Linear(64 * 26, 1000), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(1000, 500), nn.ReLU())
        self.fc3 = nn.Sequential(nn.Linear(500, 6))

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out)
        out = out.reshape([-1, 64 * 26])
        out = self.fc1(out)
        out = self.fc2(out)
        out = self.fc3(out)
        return out


if __name__ == '__main__':
    paddle.seed(10)
    train_set, test_set = load()
    model = paddle.Model(Network())
    optimizer = paddle.optimizer.Momentum(learning_rate=LEARNING_RATE, momentum=0.9,
                                          parameters=model.parameters())
    model.prepare(optimizer, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    model.fit(train_set, test_set, epochs=N_EPOCH, batch_size=BATCH_SIZE, drop_last=True, verbose=2)
