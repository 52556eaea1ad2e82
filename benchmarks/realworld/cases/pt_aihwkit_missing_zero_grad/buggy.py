"""aihwkit example 1: simple network with one layer (IBM/aihwkit, examples/01_simple_layer.py).

Port of the example before commit 3b961d3: the loop never clears the gradients, so every
step applies the sum of all gradients so far. The analog layer and optimizer (aihwkit, not
installed here) are replaced by their digital counterparts, nn.Linear and SGD.
The network aims to learn to sum all the elements from one array.
"""
# Imports from PyTorch.
from torch import Tensor
from torch.nn import Linear
from torch.nn.functional import mse_loss
from torch.optim import SGD

import lossprobe

# Prepare the datasets (input and expected output).
x = Tensor([[0.1, 0.2, 0.4, 0.3], [0.2, 0.1, 0.1, 0.3]])
y = Tensor([[1.0, 0.5], [0.7, 0.3]])

# Define a single-layer network.
model = Linear(4, 2, bias=True)

# Define the optimizer.
opt = SGD(model.parameters(), lr=0.1)
probe = lossprobe.attach(model)  # lossprobe: the one added line

for epoch in range(100):
    # Add the training Tensor to the model (input).
    pred = model(x)
    # Add the expected output Tensor.
    loss = mse_loss(pred, y)
    # Run training (backward propagation).
    loss.backward()

    opt.step()
    print('Loss error: {:.16f}'.format(loss))
