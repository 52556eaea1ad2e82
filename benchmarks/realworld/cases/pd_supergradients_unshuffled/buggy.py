"""ResNet image classification with super-gradients' default dataloader params (Deci-AI/
super-gradients issue #416), ported to Paddle's high-level API (paddle.Model.fit).

As in the issue's buggy params, the training DataLoader gets only a batch size, so it keeps
the ImageFolder order - class by class - and each batch holds one or two classes. ImageNet
is replaced by scikit-learn's digits (upsampled to 16x16, stored class by class) and
ResNet-18 by a ResNet with one basic block per stage.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from scipy.ndimage import zoom
from sklearn.datasets import load_digits

dataloader_params = {"batch_size": 196}  # buggy params
train_params = {"max_epochs": 6, "initial_lr": 0.001,
                "optimizer_params": {"weight_decay": 0.0001, "momentum": 0.9, "nesterov": True}}


class BasicBlock(nn.Layer):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2D(in_planes, planes, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(planes)
        self.conv2 = nn.Conv2D(planes, planes, 3, stride=1, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2D(in_planes, planes, 1, stride=stride, bias_attr=False),
                                          nn.BatchNorm2D(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Layer):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2D(1, width, 3, stride=1, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(width)
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
    labels = digits.target[order].astype(np.int64).reshape(-1, 1)
    return paddle.io.TensorDataset([paddle.to_tensor(images[:, None]), paddle.to_tensor(labels)])


if __name__ == '__main__':
    paddle.seed(0)
    train_dataloader = paddle.io.DataLoader(image_folder_digits(), **dataloader_params)
    model = paddle.Model(ResNet(num_classes=10))
    opt = train_params["optimizer_params"]
    optimizer = paddle.optimizer.Momentum(learning_rate=train_params["initial_lr"], momentum=opt["momentum"],
                                          use_nesterov=opt["nesterov"], weight_decay=opt["weight_decay"],
                                          parameters=model.parameters())
    model.prepare(optimizer, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    model.fit(train_dataloader, epochs=train_params["max_epochs"], verbose=2)
