"""skorch MNIST notebook (skorch-dev/skorch notebooks/MNIST.ipynb) with the optimizer switched
to Adam, as in issue #481, with the fix of commit 873b481 (#491): get_loss adds the float
type's epsilon before taking the log of the probabilities, so an underflowed 0 stays finite. skorch is not installed here, so its fit loop (train/valid split,
batches of 128, train step, validation step) is written out; MNIST is replaced by the bundled
8x8 digits (the hidden layer keeps the notebook's 98 units).
"""
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import lossprobe

X, y = load_digits(return_X_y=True)
X = X.astype('float32') / 16.0          # the notebook scales MNIST pixels to [0, 1]
y = y.astype('int64')
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=42)

mnist_dim = X.shape[1]
hidden_dim = 98                          # int(784 / 8), the notebook's MNIST value
output_dim = len(np.unique(y))


class ClassifierModule(nn.Module):
    def __init__(self, input_dim=mnist_dim, hidden_dim=hidden_dim, output_dim=output_dim, dropout=0.5):
        super(ClassifierModule, self).__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(input_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, output_dim)

    def forward(self, X, **kwargs):
        X = F.relu(self.hidden(X))
        X = self.dropout(X)
        X = F.softmax(self.output(X), dim=-1)
        return X


def get_loss(criterion, y_pred, y_true):
    """NeuralNetClassifier.get_loss: the module returns probabilities, NLLLoss wants logs."""
    if isinstance(criterion, torch.nn.NLLLoss):
        eps = torch.finfo(y_pred.dtype).eps
        y_pred = torch.log(y_pred + eps)
    return criterion(y_pred, y_true)


def fit(module, optimizer, criterion, X, y, max_epochs=20, batch_size=128):
    """NeuralNet.fit: a stratified 80/20 train/valid split, then per epoch a training pass
    (shuffled batches) and a validation pass."""
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    X_tr, y_tr = torch.from_numpy(X_tr), torch.from_numpy(y_tr)
    X_va, y_va = torch.from_numpy(X_va), torch.from_numpy(y_va)
    for epoch in range(max_epochs):
        module.train()
        train_losses = []
        for idx in torch.randperm(len(y_tr)).split(batch_size):
            optimizer.zero_grad()
            loss = get_loss(criterion, module(X_tr[idx]), y_tr[idx])
            loss.backward()
            optimizer.step()
            train_losses.append(loss.item())
        module.eval()
        with torch.no_grad():
            valid_loss = get_loss(criterion, module(X_va), y_va).item()
        print(f'epoch {epoch + 1:2d}  train_loss {np.mean(train_losses):.4f}  valid_loss {valid_loss:.4f}')


torch.manual_seed(0)
module = ClassifierModule()
optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
criterion = torch.nn.NLLLoss()
probe = lossprobe.attach(module)  # lossprobe: the one added line
fit(module, optimizer, criterion, X_train, y_train)
