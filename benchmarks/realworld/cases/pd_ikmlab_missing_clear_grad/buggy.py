"""PyTorch basics tutorial (IKMLab/course_material, "PyTorch-基本功能.ipynb", validation
section), ported to a Paddle dygraph loop.

As before commit 17ee919 (issue #3), the loop calls ``loss.backward()`` and ``optimizer.step()``
but never clears the gradients (``optimizer.clear_grad()`` in Paddle), so every SGD step
applies the sum of all gradients so far and the loss swings instead of settling.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.io import DataLoader, Dataset

import lossprobe


class MyDataset(Dataset):
    def __init__(self, size):
        self.x = paddle.rand([size]) * 2 - 1
        self.y = 2 * self.x ** 2 + 3 * self.x + 17

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index:index + 1], self.y[index:index + 1]


class MyModel(nn.Layer):
    def __init__(self, in_dim, hid_dim, out_dim):
        super(MyModel, self).__init__()
        self.layer1 = nn.Linear(in_features=in_dim, out_features=hid_dim)
        self.layer2 = nn.Linear(in_features=hid_dim, out_features=out_dim)

    def forward(self, batch_x):
        h = self.layer1(batch_x)
        a = F.relu(h)
        y = self.layer2(a)
        return y


paddle.seed(0)

train_dataset = MyDataset(1000)
test_dataset = MyDataset(500)

batch_size = 50
n_epoch = 50
hid_dim = 10

train_data_loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True)
test_data_loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=True)

model = MyModel(in_dim=1, hid_dim=hid_dim, out_dim=1)

criterion = nn.MSELoss()
optimizer = paddle.optimizer.SGD(learning_rate=0.0001, parameters=model.parameters())
probe = lossprobe.attach(model)  # lossprobe: the one added line

for epoch in range(n_epoch):
    for batch_x, batch_y in train_data_loader:
        pred_y = model(batch_x)
        loss = criterion(pred_y, batch_y)

        loss.backward()
        optimizer.step()

    with paddle.no_grad():
        total_loss = 0
        for batch_x, batch_y in train_data_loader:
            pred_y = model(batch_x)
            loss = criterion(pred_y, batch_y)
            total_loss += float(loss) / len(train_data_loader)
        print('Epoch {}, training loss: {}'.format(epoch, total_loss))

        total_loss = 0
        for batch_x, batch_y in test_data_loader:
            pred_y = model(batch_x)
            loss = criterion(pred_y, batch_y)
            total_loss += float(loss) / len(test_data_loader)
        print('Epoch {}, testing loss: {}'.format(epoch, total_loss))
