"""Document regression with FARM (deepset-ai/FARM: examples/doc_regression.py, AdaptiveModel,
RegressionHead, Trainer) as fixed by commit ee306162 (#230, issue #229): the logits keep
their (batch, 1) shape, matching the labels, so each prediction is compared with its own
label. BERT is replaced by a bag-of-embeddings language model and the German
regression corpus by synthetic documents whose score depends on the words they contain.
"""
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import lossprobe

VOCAB, SEQ_LEN, HIDDEN = 500, 40, 64
n_epochs = 5
batch_size = 32
learning_rate = 1e-3


class LanguageModel(nn.Module):
    """Stand-in for Bert: mean of token embeddings through a tanh pooler."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.pooler = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh())

    def forward(self, input_ids, padding_mask):
        emb = self.embeddings(input_ids) * padding_mask.unsqueeze(-1)
        pooled = emb.sum(1) / padding_mask.sum(1, keepdim=True)
        return self.pooler(pooled)


class FeedForwardBlock(nn.Module):
    """ A feed forward neural network of variable depth and width. """

    def __init__(self, layer_dims):
        super(FeedForwardBlock, self).__init__()
        layers_all = [nn.Linear(layer_dims[i], layer_dims[i + 1]) for i in range(len(layer_dims) - 1)]
        self.feed_forward = nn.Sequential(*layers_all)

    def forward(self, X):
        return self.feed_forward(X)


class RegressionHead(nn.Module):
    def __init__(self, layer_dims=[768, 1]):
        super(RegressionHead, self).__init__()
        self.feed_forward = FeedForwardBlock(layer_dims)
        self.loss_fct = nn.MSELoss(reduction="none")

    def forward(self, x):
        logits = self.feed_forward(x)
        return logits

    def logits_to_loss(self, logits, label_ids):
        return self.loss_fct(logits, label_ids.float())


class AdaptiveModel(nn.Module):
    def __init__(self, language_model, prediction_heads):
        super().__init__()
        self.language_model = language_model
        self.prediction_heads = nn.ModuleList(prediction_heads)

    def forward(self, input_ids, padding_mask):
        pooled_output = self.language_model(input_ids, padding_mask)
        return [head(pooled_output) for head in self.prediction_heads]

    def logits_to_loss(self, logits, label_ids):
        all_losses = [head.logits_to_loss(l, label_ids) for head, l in zip(self.prediction_heads, logits)]
        return torch.stack(all_losses).sum(0)  # per sample, summed over heads


def make_documents(n, seed):
    """Stand-in for the regression corpus: each word carries a hidden score; a document's
    label is the mean score of its words plus noise, standardised as FARM's
    RegressionProcessor does (the head keeps mean and scale to undo it)."""
    rng = np.random.default_rng(seed)
    word_score = np.random.default_rng(0).normal(0, 1, VOCAB)
    ids = np.zeros((n, SEQ_LEN), np.int64)
    mask = np.zeros((n, SEQ_LEN), np.float32)
    y = np.zeros(n, np.float32)
    for k in range(n):
        length = rng.integers(10, SEQ_LEN + 1)
        words = rng.integers(1, VOCAB, size=length)
        ids[k, :length], mask[k, :length] = words, 1.0
        y[k] = word_score[words].mean() + rng.normal(0, 0.05)
    y = (y - y.mean()) / y.std()
    return TensorDataset(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(y).unsqueeze(1))


if __name__ == '__main__':
    torch.manual_seed(42)
    train_loader = DataLoader(make_documents(2000, seed=1), batch_size=batch_size, shuffle=True)
    model = AdaptiveModel(language_model=LanguageModel(), prediction_heads=[RegressionHead(layer_dims=[HIDDEN, 1])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    probe = lossprobe.attach(model)  # lossprobe: the one added line

    for epoch in range(n_epochs):
        model.train()
        losses = []
        for input_ids, padding_mask, label_ids in train_loader:
            logits = model(input_ids, padding_mask)
            per_sample_loss = model.logits_to_loss(logits=logits, label_ids=label_ids)
            loss = per_sample_loss.mean()  # Trainer.adjust_loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: train loss {np.mean(losses):.4f}")
