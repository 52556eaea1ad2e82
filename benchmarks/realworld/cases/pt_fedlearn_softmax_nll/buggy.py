"""Federated-learning baseline, centralised training (AshwinRJ/Federated-Learning-PyTorch:
src/baseline_main.py with --model=mlp, src/models.py MLP).

The MLP ends in ``nn.Softmax`` and the loss is ``nn.NLLLoss``, which expects
log-probabilities: the loss is minus the probability of the right class, always negative,
and its gradient vanishes as that probability nears 0 or 1 (issue #30). MNIST is replaced by
scikit-learn's bundled 8x8 digits, normalised as the repository normalises MNIST.
"""
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossprobe


class Args:
    epochs = 10
    lr = 0.01
    momentum = 0.5
    optimizer = 'sgd'
    num_classes = 10
    seed = 1


class MLP(nn.Module):
    def __init__(self, dim_in, dim_hidden, dim_out):
        super(MLP, self).__init__()
        self.layer_input = nn.Linear(dim_in, dim_hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout()
        self.layer_hidden = nn.Linear(dim_hidden, dim_out)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        x = x.view(-1, x.shape[1] * x.shape[-2] * x.shape[-1])
        x = self.layer_input(x)
        x = self.dropout(x)
        x = self.relu(x)
        x = self.layer_hidden(x)
        return self.softmax(x)


def get_dataset():
    """Stand-in for datasets.MNIST + ToTensor + Normalize((0.1307,), (0.3081,))."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    images = (images - images.mean()) / images.std()
    x = torch.from_numpy(images).unsqueeze(1)  # N x 1 x 8 x 8
    y = torch.from_numpy(digits.target).long()
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


if __name__ == '__main__':
    args = Args()
    torch.manual_seed(args.seed)
    device = 'cpu'

    # load datasets
    train_dataset, test_dataset = get_dataset()

    # BUILD MODEL: multi-layer perceptron
    img_size = train_dataset[0][0].shape
    len_in = 1
    for x in img_size:
        len_in *= x
    global_model = MLP(dim_in=len_in, dim_hidden=64, dim_out=args.num_classes)

    # Set the model to train and send it to device.
    global_model.to(device)
    global_model.train()
    print(global_model)

    # Training
    # Set optimizer and criterion
    if args.optimizer == 'sgd':
        optimizer = torch.optim.SGD(global_model.parameters(), lr=args.lr, momentum=0.5)
    elif args.optimizer == 'adam':
        optimizer = torch.optim.Adam(global_model.parameters(), lr=args.lr, weight_decay=1e-4)
    probe = lossprobe.attach(global_model)  # lossprobe: the one added line

    trainloader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    criterion = torch.nn.NLLLoss().to(device)
    epoch_loss = []

    for epoch in range(args.epochs):
        batch_loss = []

        for batch_idx, (images, labels) in enumerate(trainloader):
            images, labels = images.to(device), labels.to(device)

            optimizer.zero_grad()
            outputs = global_model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

            if batch_idx % 50 == 0:
                print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                    epoch + 1, batch_idx * len(images), len(trainloader.dataset),
                    100. * batch_idx / len(trainloader), loss.item()))
            batch_loss.append(loss.item())

        loss_avg = sum(batch_loss) / len(batch_loss)
        print('\nTrain loss:', loss_avg)
        epoch_loss.append(loss_avg)
