"""Human activity recognition CNN (jindongwang/Deep-learning-activity-recognition, pytorch/).

Port of pytorch/main_pytorch.py + network.py + data_preprocess.py at commit 6ec30f24: the
network ends in ``F.softmax`` and its output goes into ``nn.CrossEntropyLoss``, which applies
log-softmax itself. UCI HAR is replaced by synthetic 9-channel inertial windows (see load()).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset

import lossprobe

BATCH_SIZE = 64
N_EPOCH = 6
LEARNING_RATE = 0.01
DEVICE = torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')


def load(batch_size=64, n_per_class=200, seed=0):
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
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_train = int(0.8 * len(y))
    train = TensorDataset(torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train]))
    test = TensorDataset(torch.from_numpy(x[n_train:]), torch.from_numpy(y[n_train:]))
    return (DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(test, batch_size=batch_size, shuffle=False))


class Network(nn.Module):
    def __init__(self):
        super(Network, self).__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels=9, out_channels=32, kernel_size=(1, 9)),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(1, 2), stride=2)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=(1, 9)),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(1, 2), stride=2)
        )
        self.fc1 = nn.Sequential(
            nn.Linear(in_features=64 * 26, out_features=1000),
            nn.ReLU()
        )
        self.fc2 = nn.Sequential(
            nn.Linear(in_features=1000, out_features=500),
            nn.ReLU()
        )
        self.fc3 = nn.Sequential(
            nn.Linear(in_features=500, out_features=6)
        )

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out)
        out = out.reshape(-1, 64 * 26)
        out = self.fc1(out)
        out = self.fc2(out)
        out = self.fc3(out)
        out = F.softmax(out, dim=1)
        return out


def train(model, optimizer, train_loader, test_loader):
    n_batch = len(train_loader.dataset) // BATCH_SIZE
    criterion = nn.CrossEntropyLoss()

    for e in range(N_EPOCH):
        model.train()
        correct, total_loss = 0, 0
        for index, (sample, target) in enumerate(train_loader):
            sample, target = sample.to(DEVICE).float(), target.to(DEVICE).long()
            sample = sample.view(-1, 9, 1, 128)
            output = model(sample)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            _, predicted = torch.max(output.data, 1)
            correct += (predicted == target).sum()
        acc_train = float(correct) * 100.0 / (BATCH_SIZE * n_batch)
        print('Epoch: [{}/{}], loss: {:.4f}, train acc: {:.2f}%'.format(
            e + 1, N_EPOCH, total_loss * 1.0 / n_batch, acc_train))

        model.train(False)
        with torch.no_grad():
            correct, total = 0, 0
            for sample, target in test_loader:
                sample, target = sample.to(DEVICE).float(), target.to(DEVICE).long()
                sample = sample.view(-1, 9, 1, 128)
                output = model(sample)
                _, predicted = torch.max(output.data, 1)
                total += target.size(0)
                correct += (predicted == target).sum()
        print('Epoch: [{}/{}], test acc: {:.2f}%'.format(e + 1, N_EPOCH, float(correct) * 100 / total))


if __name__ == '__main__':
    torch.manual_seed(10)
    train_loader, test_loader = load(batch_size=BATCH_SIZE)
    model = Network().to(DEVICE)
    optimizer = optim.SGD(params=model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    probe = lossprobe.attach(model)  # lossprobe: the one added line
    train(model, optimizer, train_loader, test_loader)
