"""Item2Vec recommender (AmazingDD/daisyRec, daisy/model/Item2VecRecommender.py).

Port of the model, its GeneralRecommender.fit loop and the SkipGramNegativeSampler before
commit 5cce37e: forward() ends in ``nn.Sigmoid`` and the loss is ``nn.BCEWithLogitsLoss``,
which applies a sigmoid itself. MovieLens-100k is replaced by synthetic genre-driven
interaction sequences (see make_interactions()).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

import lossprobe

config = {
    'user_num': 300, 'item_num': 200, 'factors': 100, 'lr': 0.001, 'epochs': 5,
    'optimizer': 'default', 'init_method': 'default', 'early_stop': True, 'topk': 50,
    'context_window': 2, 'batch_size': 256,
}


def make_interactions(user_num, item_num, n_genres=10, seq_len=15, seed=2022):
    """Stand-in for MovieLens-100k: each user consumes items of a favourite genre, plus the
    odd item from elsewhere, in time order; returns {user: [item, ...]}."""
    rng = np.random.default_rng(seed)
    genre = np.arange(item_num) % n_genres
    seqs = {}
    for u in range(user_num):
        pool = np.flatnonzero(genre == rng.integers(n_genres))
        items = np.concatenate([rng.choice(pool, seq_len - 2, replace=False),
                                rng.choice(item_num, 2, replace=False)])
        seqs[u] = list(rng.permutation(np.unique(items)))
    return seqs


def skip_gram_negative_samples(train_seqs, item_num, context_window):
    """<target_i, context_j, label> triples: neighbours within the window are positives,
    as many items the user never touched are negatives."""
    sgns_samples = []
    for u, seq in train_seqs.items():
        cands = np.setdiff1d(np.arange(item_num), seq)
        for i in range(len(seq)):
            target = seq[i]
            context_list = []
            j = i - context_window
            while j <= i + context_window and j < len(seq):
                if j >= 0 and j != i:
                    context_list.append(seq[j])
                    sgns_samples.append([target, seq[j], 1])
                j += 1
            for neg_item in np.random.choice(cands, size=len(context_list)):
                sgns_samples.append([target, neg_item, 0])
    return np.array(sgns_samples)


class Item2Vec(nn.Module):
    def __init__(self, config):
        super(Item2Vec, self).__init__()
        self.user_embedding = nn.Embedding(config['user_num'], config['factors'])
        self.ur = config['train_ur']
        self.shared_embedding = nn.Embedding(config['item_num'], config['factors'])
        self.lr = config['lr']
        self.epochs = config['epochs']
        self.out_act = nn.Sigmoid()
        self.early_stop = config['early_stop']
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)

    def forward(self, target_i, context_j):
        target_emb = self.shared_embedding(target_i)  # batch_size * embedding_size
        context_emb = self.shared_embedding(context_j)  # batch_size * embedding_size
        output = torch.sum(target_emb * context_emb, dim=1)
        output = self.out_act(output)
        return output.view(-1)

    def calc_loss(self, batch):
        target_i = batch[0]
        context_j = batch[1]
        label = batch[2].float()
        prediction = self.forward(target_i, context_j)
        loss = self.criterion(prediction, label)
        return loss

    def fit(self, train_loader):
        optimizer = optim.Adam(self.parameters(), lr=self.lr)
        self.criterion = nn.BCEWithLogitsLoss(reduction='sum')
        last_loss = 0.
        for epoch in range(1, self.epochs + 1):
            self.train()
            current_loss = 0.
            for batch in train_loader:
                self.zero_grad()
                loss = self.calc_loss(batch)
                if torch.isnan(loss):
                    raise ValueError('Loss=Nan or Infinity: current settings does not fit the recommender')
                loss.backward()
                optimizer.step()
                current_loss += loss.item()
            print(f'[Epoch {epoch:03d}] loss={current_loss:.2f}')
            self.eval()
            delta_loss = float(current_loss - last_loss)
            if (abs(delta_loss) < 1e-5) and self.early_stop:
                print('Satisfy early stop mechanism')
                break
            else:
                last_loss = current_loss

        print('Start building user embedding...')
        for u in self.ur.keys():
            uis = torch.tensor(list(self.ur[u]))
            self.user_embedding.weight.data[u] = self.shared_embedding(uis).sum(dim=0)


if __name__ == '__main__':
    np.random.seed(2022)
    torch.manual_seed(2022)
    train_seqs = make_interactions(config['user_num'], config['item_num'])
    config['train_ur'] = {u: set(seq) for u, seq in train_seqs.items()}
    samples = skip_gram_negative_samples(train_seqs, config['item_num'], config['context_window'])
    train_loader = DataLoader(torch.from_numpy(samples).long(), batch_size=config['batch_size'],
                              shuffle=True, collate_fn=lambda rows: torch.stack(rows).t())
    model = Item2Vec(config)
    probe = lossprobe.attach(model)  # lossprobe: the one added line
    model.fit(train_loader)
