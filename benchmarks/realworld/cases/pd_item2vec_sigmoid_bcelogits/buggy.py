"""Item2Vec recommender (AmazingDD/daisyRec, daisy/model/Item2VecRecommender.py), ported to a
Paddle dygraph loop.

As before commit 5cce37e: forward() ends in ``nn.Sigmoid`` and the loss is
``nn.BCEWithLogitsLoss``, which applies a sigmoid itself. MovieLens-100k is replaced by synthetic genre-driven
interaction sequences (see make_interactions()).
"""
import numpy as np
import paddle
import paddle.nn as nn

import lossprobe

config = {
    'user_num': 200, 'item_num': 200, 'factors': 100, 'lr': 0.001, 'epochs': 4,
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


class Item2Vec(nn.Layer):
    def __init__(self, config):
        super(Item2Vec, self).__init__()
        self.user_embedding = nn.Embedding(config['user_num'], config['factors'])
        self.ur = config['train_ur']
        self.shared_embedding = nn.Embedding(config['item_num'], config['factors'])
        self.lr = config['lr']
        self.epochs = config['epochs']
        self.out_act = nn.Sigmoid()
        self.early_stop = config['early_stop']
        normal = nn.initializer.Normal(mean=0.0, std=0.01)
        for m in self.sublayers():
            if isinstance(m, nn.Embedding):
                normal(m.weight)

    def forward(self, target_i, context_j):
        target_emb = self.shared_embedding(target_i)  # batch_size * embedding_size
        context_emb = self.shared_embedding(context_j)  # batch_size * embedding_size
        output = paddle.sum(target_emb * context_emb, axis=1)
        output = self.out_act(output)
        return output.reshape([-1])

    def calc_loss(self, batch):
        target_i = batch[0]
        context_j = batch[1]
        label = batch[2].astype('float32')
        prediction = self.forward(target_i, context_j)
        loss = self.criterion(prediction, label)
        return loss

    def fit(self, train_loader):
        optimizer = paddle.optimizer.Adam(learning_rate=self.lr, parameters=self.parameters())
        self.criterion = nn.BCEWithLogitsLoss(reduction='sum')
        last_loss = 0.
        for epoch in range(1, self.epochs + 1):
            self.train()
            current_loss = 0.
            for batch in train_loader:
                optimizer.clear_grad()
                loss = self.calc_loss(batch)
                if paddle.isnan(loss):
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
        with paddle.no_grad():
            for u in self.ur.keys():
                uis = paddle.to_tensor(np.array(list(self.ur[u]), dtype=np.int64))
                self.user_embedding.weight[u] = self.shared_embedding(uis).sum(axis=0)


if __name__ == '__main__':
    np.random.seed(2022)
    paddle.seed(2022)
    train_seqs = make_interactions(config['user_num'], config['item_num'])
    config['train_ur'] = {u: set(seq) for u, seq in train_seqs.items()}
    samples = skip_gram_negative_samples(train_seqs, config['item_num'], config['context_window'])
    train_loader = paddle.io.DataLoader(paddle.io.TensorDataset([paddle.to_tensor(samples.astype(np.int64))]),
                                        batch_size=config['batch_size'], shuffle=True,
                                        collate_fn=lambda rows: paddle.to_tensor(np.stack([r[0] for r in rows]).T))
    model = Item2Vec(config)
    probe = lossprobe.attach(model)  # lossprobe: the one added line
    model.fit(train_loader)
