"""Tennis court keypoint detector (yastrebksv/TennisCourtDetector: main.py, base_trainer.py,
tracknet.py) before commit e5cd4f1.

``train()`` calls ``loss.backward()`` and ``optimizer.step()`` but never clears the
gradients, so every Adam step sees the sum of all gradients since the start. The TrackNet-style
encoder-decoder (BallTrackerNet) is kept block for block with 1/8 of the channels, and the
court dataset is replaced by synthetic 48x48 court drawings with 15 keypoint heatmaps.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import lossprobe

BATCH_SIZE = 2
NUM_EPOCHS = 4
LR = 1e-3
STEPS_PER_EPOCH = 100
SIZE = 48


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, pad=1, stride=1, bias=True):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias),
            nn.ReLU(),
            nn.BatchNorm2d(out_channels)
        )

    def forward(self, x):
        return self.block(x)


class BallTrackerNet(nn.Module):
    def __init__(self, out_channels=14, width=8):
        super().__init__()
        w = width
        self.out_channels = out_channels
        self.conv1 = ConvBlock(in_channels=3, out_channels=w)
        self.conv2 = ConvBlock(in_channels=w, out_channels=w)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv3 = ConvBlock(in_channels=w, out_channels=2 * w)
        self.conv4 = ConvBlock(in_channels=2 * w, out_channels=2 * w)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv5 = ConvBlock(in_channels=2 * w, out_channels=4 * w)
        self.conv6 = ConvBlock(in_channels=4 * w, out_channels=4 * w)
        self.conv7 = ConvBlock(in_channels=4 * w, out_channels=4 * w)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv8 = ConvBlock(in_channels=4 * w, out_channels=8 * w)
        self.conv9 = ConvBlock(in_channels=8 * w, out_channels=8 * w)
        self.conv10 = ConvBlock(in_channels=8 * w, out_channels=8 * w)
        self.ups1 = nn.Upsample(scale_factor=2)
        self.conv11 = ConvBlock(in_channels=8 * w, out_channels=4 * w)
        self.conv12 = ConvBlock(in_channels=4 * w, out_channels=4 * w)
        self.conv13 = ConvBlock(in_channels=4 * w, out_channels=4 * w)
        self.ups2 = nn.Upsample(scale_factor=2)
        self.conv14 = ConvBlock(in_channels=4 * w, out_channels=2 * w)
        self.conv15 = ConvBlock(in_channels=2 * w, out_channels=2 * w)
        self.ups3 = nn.Upsample(scale_factor=2)
        self.conv16 = ConvBlock(in_channels=2 * w, out_channels=w)
        self.conv17 = ConvBlock(in_channels=w, out_channels=w)
        self.conv18 = ConvBlock(in_channels=w, out_channels=self.out_channels)
        self._init_weights()

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.pool1(x)
        x = self.conv3(x)
        x = self.conv4(x)
        x = self.pool2(x)
        x = self.conv5(x)
        x = self.conv6(x)
        x = self.conv7(x)
        x = self.pool3(x)
        x = self.conv8(x)
        x = self.conv9(x)
        x = self.conv10(x)
        x = self.ups1(x)
        x = self.conv11(x)
        x = self.conv12(x)
        x = self.conv13(x)
        x = self.ups2(x)
        x = self.conv14(x)
        x = self.conv15(x)
        x = self.ups3(x)
        x = self.conv16(x)
        x = self.conv17(x)
        x = self.conv18(x)
        return x

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.uniform_(module.weight, -0.05, 0.05)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)


class CourtDataset(Dataset):
    """Stand-in for the court dataset: a court drawn as a 5x3 grid of white lines under a
    random perspective on green, and one Gaussian heatmap per line crossing (15 keypoints)."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        self.images, self.heatmaps = [], []
        for _ in range(n):
            corners = np.array([[8, 10], [40, 10], [44, 40], [4, 40]], np.float32)
            corners += rng.uniform(-3, 3, size=corners.shape).astype(np.float32)
            def at(u, v):  # bilinear point inside the quadrilateral
                top = corners[0] * (1 - u) + corners[1] * u
                bottom = corners[3] * (1 - u) + corners[2] * u
                return top * (1 - v) + bottom * v
            img = np.zeros((3, SIZE, SIZE), np.float32)
            img[1] = 0.5  # grass
            for s in np.linspace(0, 1, 60):
                for u in (0, 0.25, 0.5, 0.75, 1):
                    px, py = at(u, s)
                    img[:, int(round(py)), int(round(px))] = 1.0
                for v in (0, 0.5, 1):
                    px, py = at(s, v)
                    img[:, int(round(py)), int(round(px))] = 1.0
            img += rng.normal(0, 0.05, img.shape).astype(np.float32)
            hms = [np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 1.5 ** 2))
                   for u in (0, 0.25, 0.5, 0.75, 1) for v in (0, 0.5, 1) for px, py in [at(u, v)]]
            self.images.append(img)
            self.heatmaps.append(np.stack(hms).astype(np.float32))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.heatmaps[idx]


def train(model, train_loader, optimizer, criterion, device, epoch, max_iters=1000):
    model.train()
    losses = []
    max_iters = min(max_iters, len(train_loader))

    for iter_id, batch in enumerate(train_loader):
        out = model(batch[0].float().to(device))
        gt_hm_hp = batch[1].float().to(device)
        loss = criterion(F.sigmoid(out), gt_hm_hp)

        loss.backward()
        optimizer.step()
        if iter_id % 25 == 0:
            print('train, epoch = {}, iter_id = {}/{}, loss = {}'.format(epoch, iter_id, max_iters, loss.item()))
        losses.append(loss.item())
        if iter_id > max_iters:
            break

    return np.mean(losses)


if __name__ == '__main__':
    torch.manual_seed(0)
    train_dataset = CourtDataset(200, seed=0)
    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=BATCH_SIZE, shuffle=True)

    model = BallTrackerNet(out_channels=15)
    device = 'cpu'
    model = model.to(device)

    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), LR, betas=(0.9, 0.999), weight_decay=0)
    probe = lossprobe.attach(model)  # lossprobe: the one added line

    for epoch in range(NUM_EPOCHS):
        train_loss = train(model, train_loader, optimizer, criterion, device, epoch, STEPS_PER_EPOCH)
        print('epoch {}: training loss = {:.5f}'.format(epoch, train_loss))
