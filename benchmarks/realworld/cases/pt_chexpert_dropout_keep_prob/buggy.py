"""CheXpert baseline classifier (Gofinge/CheXpert_Baseline_PyTorch: main.py, config.py,
models/densenet.py) at commit d4d6bb1.

The classifier head is ``Linear -> Dropout(p=0.9) -> Linear -> Sigmoid``: the author read
``p`` as the keep probability, so 90% of the features are dropped at every training step.
The torchvision DenseNet is rebuilt from torch.nn with two small dense blocks, and the
chest X-ray data set is replaced by synthetic 32x32 radiographs with five findings.
"""
import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, TensorDataset

import lossprobe


class DefaultConfig(object):
    classes = ['Atelectasis', 'Cardiomegaly', 'Pleural Effusion', 'Consolidation', 'Edema']
    batch_size = 10
    max_epoch = 5
    lr = 0.001
    betas = (0.9, 0.999)
    eps = 1e-08
    weight_decay = 1e-5


opt = DefaultConfig()


class DenseLayer(nn.Sequential):
    def __init__(self, in_channels, growth):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, growth, kernel_size=3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, super().forward(x)], 1)


class DenseNet(nn.Module):
    """DenseNet layout (stem, dense blocks, transition, final norm, global pooling,
    classifier) with two 3-layer blocks of growth 8 instead of 6-12-48-32 layers of 32."""

    def __init__(self, growth=8, block=3):
        super().__init__()
        c = 2 * growth
        layers = [nn.Conv2d(3, c, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c),
                  nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        for b in range(2):
            for _ in range(block):
                layers.append(DenseLayer(c, growth))
                c += growth
            if b == 0:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                           nn.Conv2d(c, c // 2, kernel_size=1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, 1000)

    def forward(self, x):
        return self.classifier(self.features(x))


def densenet(num_classes):
    model = DenseNet()
    num_features = model.classifier.in_features
    model.classifier = nn.Sequential(
        nn.Linear(num_features, num_features),
        nn.Dropout(p=0.9),
        nn.Linear(num_features, num_classes),
        nn.Sigmoid()
    )
    return model


def chest_xrays(n, seed):
    """Stand-in for CheXpert: grey 32x32 chest fields; each finding (present with p=0.3)
    adds its own opacity pattern at its own place and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    patterns = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s ** 2))
                for cx, cy, s in [(0.3, 0.3, 0.08), (0.5, 0.6, 0.2), (0.5, 0.95, 0.1),
                                  (0.75, 0.45, 0.1), (0.5, 0.5, 0.4)]]
    labels = (rng.random((n, len(patterns))) < 0.3).astype(np.float32)
    strength = rng.uniform(0.5, 1.0, size=labels.shape) * labels
    images = np.einsum('nk,khw->nhw', strength, np.stack(patterns))
    images += 0.1 * rng.standard_normal(images.shape)
    images = np.repeat(images[:, None], 3, axis=1).astype(np.float32)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def train():
    model = densenet(len(opt.classes))
    train_data, val_data = chest_xrays(600, seed=0), chest_xrays(150, seed=1)
    train_dataloader = DataLoader(train_data, opt.batch_size, shuffle=True)
    val_dataloader = DataLoader(val_data, opt.batch_size, shuffle=False)

    criterion = torch.nn.BCELoss(reduction='mean')
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=opt.betas,
                                 eps=opt.eps, weight_decay=opt.weight_decay)
    scheduler = ReduceLROnPlateau(optimizer, factor=0.1, patience=5, mode='min')
    probe = lossprobe.attach(model)  # lossprobe: the one added line

    for epoch in range(opt.max_epoch):
        model.train()
        for i, (data, label) in enumerate(train_dataloader):
            inp = data.clone().detach().requires_grad_(True)
            target = label.clone().detach()
            optimizer.zero_grad()
            output = model(inp)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
        loss_mean = _val(model, val_dataloader, criterion)
        scheduler.step(loss_mean)
        print('Epoch [' + str(epoch + 1) + '] val loss= ' + str(loss_mean))


def _val(model, dataloader, criterion):
    model.eval()
    counter = 0
    loss_sum = 0
    with torch.no_grad():
        for i, (data, label) in enumerate(dataloader):
            output = model(data)
            loss = criterion(output, label)
            loss_sum += loss.item()
            counter += 1
    return loss_sum / counter


if __name__ == '__main__':
    torch.manual_seed(0)
    train()
