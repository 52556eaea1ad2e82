"""ResNet image classification with super-gradients' default dataloader params (Deci-AI/
super-gradients issue #416), with the issue's non-buggy params, the default that commit
f7f02294a (PR #581) puts into every training recipe: ``shuffle=True``. super-gradients'
Trainer is written out as a plain loop with the issue's train_params; ImageNet is replaced by
scikit-learn's digits (upsampled to 16x16, stored class by class like an ImageFolder) and
ResNet-18 by a ResNet with one basic block per stage.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lossprobe

dataloader_params = {"batch_size": 196, "shuffle": True}  # non-buggy params
train_params = {"max_epochs": 8, "initial_lr": 0.001, "optimizer": "SGD",
                "optimizer_params": {"weight_decay": 0.0001, "momentum": 0.9, "nesterov": True}}


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.layer4 = BasicBlock(4 * width, 8 * width, stride=2)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def image_folder_digits():
    """Digits as an ImageFolder would list them: all of class 0, then class 1, ..."""
    digits = load_digits()
    order = np.argsort(digits.target, kind="stable")
    images = zoom(digits.images[order] / 16.0, (1, 2, 2), order=1).astype(np.float32)
    images = (images - images.mean()) / images.std()
    return TensorDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target[order]).long())


if __name__ == '__main__':
    torch.manual_seed(0)
    train_dataloader = DataLoader(image_folder_digits(), **dataloader_params)
    model = ResNet(num_classes=10)
    opt_params = train_params["optimizer_params"]
    optimizer = torch.optim.SGD(model.parameters(), lr=train_params["initial_lr"], **opt_params)
    criterion = nn.CrossEntropyLoss()
    probe = lossprobe.attach(model)  # lossprobe: the one added line

    for epoch in range(train_params["max_epochs"]):
        model.train()
        correct, seen, total_loss = 0, 0, 0.0
        for inputs, targets in train_dataloader:
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(targets)
            correct += (outputs.argmax(1) == targets).sum().item()
            seen += len(targets)
        print(f"epoch {epoch + 1}: loss {total_loss / seen:.4f}  accuracy {correct / seen:.3f}")
