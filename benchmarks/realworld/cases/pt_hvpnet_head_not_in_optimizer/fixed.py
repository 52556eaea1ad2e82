"""Multimodal NER with visual prompts (zjunlp/HVPNeT: models/bert_model.py HMNeTNERModel,
modules/train.py NERTrainer) as fixed by commit efe6308 ("fix optimizer bug", issue #5): the
third AdamW parameter group (CRF + classifier at lr 5e-2) is appended like the other two.
BERT and the frozen ResNet image encoder are scaled down (a one-layer transformer over token
embeddings; fixed image feature vectors), and Twitter-2015 is replaced by synthetic tagged
sentences.
"""
import numpy as np
import torch
import torch.nn as nn
from torch import optim
from torch.utils.data import DataLoader, TensorDataset

import lossprobe

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "X", "[CLS]", "[SEP]"]


class Args:
    lr = 1e-3
    num_epochs = 3
    batch_size = 8
    warmup_ratio = 0.01
    prompt_len = 4
    hidden = 64
    vocab = 400
    max_seq = 16
    image_dim = 32


class CRF(nn.Module):
    """Linear-chain CRF (the torchcrf interface HVPNeT uses): forward() returns the
    log-likelihood of the tag sequences, averaged over the batch with reduction='mean'."""

    def __init__(self, num_tags, batch_first=True):
        super().__init__()
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def forward(self, emissions, tags, mask, reduction='mean'):
        mask = mask.bool()
        bsz, seq_len, _ = emissions.shape
        idx = torch.arange(bsz)
        # score of the gold path
        score = self.start_transitions[tags[:, 0]] + emissions[idx, 0, tags[:, 0]]
        for t in range(1, seq_len):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[idx, t, tags[:, t]]
            score = score + step * mask[:, t]
        last = tags[idx, mask.sum(1) - 1]
        score = score + self.end_transitions[last]
        # log partition function (forward algorithm)
        alpha = self.start_transitions + emissions[:, 0]
        for t in range(1, seq_len):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        log_z = torch.logsumexp(alpha + self.end_transitions, dim=1)
        llh = score - log_z
        return llh.mean() if reduction == 'mean' else llh.sum()


class TinyBert(nn.Module):
    """Stand-in for BertModel: token + position embeddings and one transformer layer; the
    visual prompt enters as extra key/value positions, as past_key_values does in HVPNeT."""

    def __init__(self, args):
        super().__init__()
        self.embeddings = nn.Embedding(args.vocab, args.hidden)
        self.position = nn.Embedding(args.max_seq + args.prompt_len, args.hidden)
        self.encoder = nn.TransformerEncoderLayer(args.hidden, nhead=4, dim_feedforward=128,
                                                  dropout=0.1, batch_first=True)

    def forward(self, input_ids, attention_mask, prompt):
        x = torch.cat([prompt, self.embeddings(input_ids)], dim=1)
        x = x + self.position(torch.arange(x.shape[1]))
        out = self.encoder(x, src_key_padding_mask=~attention_mask.bool())
        return {'last_hidden_state': out[:, prompt.shape[1]:]}


class HMNeTNERModel(nn.Module):
    def __init__(self, label_list, args):
        super(HMNeTNERModel, self).__init__()
        self.args = args
        self.bert = TinyBert(args)
        self.encoder_conv = nn.Sequential(
            nn.Linear(in_features=args.image_dim, out_features=128),
            nn.Tanh(),
            nn.Linear(in_features=128, out_features=args.prompt_len * args.hidden)
        )
        self.num_labels = len(label_list)
        self.crf = CRF(self.num_labels, batch_first=True)
        self.fc = nn.Linear(args.hidden, self.num_labels)
        self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids=None, attention_mask=None, labels=None, images=None):
        bsz = input_ids.size(0)
        prompt_guids = self.encoder_conv(images).view(bsz, self.args.prompt_len, -1)
        prompt_attention_mask = torch.cat((torch.ones(bsz, self.args.prompt_len), attention_mask), dim=1)
        bert_output = self.bert(input_ids, prompt_attention_mask, prompt_guids)
        sequence_output = bert_output['last_hidden_state']  # bsz, len, hidden
        sequence_output = self.dropout(sequence_output)
        emissions = self.fc(sequence_output)  # bsz, len, labels
        loss = None
        if labels is not None:
            loss = -1 * self.crf(emissions, labels, mask=attention_mask.byte(), reduction='mean')
        return emissions, loss


def make_tweets(n, args, seed):
    """Stand-in for Twitter-2015: [CLS] words [SEP] with 0-2 entities of one or two words;
    the entity words of each type come from their own block of the vocabulary. The image
    feature vector says which entity types the tweet mentions (plus noise)."""
    rng = np.random.default_rng(seed)
    lab = {l: i for i, l in enumerate(LABELS)}
    ids = np.zeros((n, args.max_seq), np.int64)
    tags = np.zeros((n, args.max_seq), np.int64)
    mask = np.zeros((n, args.max_seq), np.int64)
    images = rng.normal(0, 0.5, (n, args.image_dim)).astype(np.float32)
    for k in range(n):
        length = rng.integers(8, args.max_seq - 1)
        words = list(rng.integers(100, args.vocab, size=length))
        word_tags = ["O"] * length
        for _ in range(rng.integers(0, 3)):
            etype = rng.integers(4)
            span = rng.integers(1, 3)
            at = rng.integers(0, length - span + 1)
            for j in range(span):
                words[at + j] = 1 + 25 * etype + rng.integers(25)
                word_tags[at + j] = ("B-" if j == 0 else "I-") + ["PER", "LOC", "ORG", "MISC"][etype]
            images[k, etype * 8:(etype + 1) * 8] += 1.0
        seq = [0] + words + [0]
        seq_tags = ["[CLS]"] + word_tags + ["[SEP]"]
        ids[k, :len(seq)] = seq
        tags[k, :len(seq)] = [lab[t] for t in seq_tags]
        mask[k, :len(seq)] = 1
    return TensorDataset(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tags), torch.from_numpy(images))


class NERTrainer:
    def __init__(self, train_data, model, args):
        self.train_data = train_data
        self.model = model
        self.args = args
        self.train_num_steps = len(self.train_data) * args.num_epochs
        self.multiModal_before_train()

    def train(self):
        self.model.train()
        for epoch in range(1, self.args.num_epochs + 1):
            avg_loss = 0
            for batch in self.train_data:
                input_ids, attention_mask, labels, images = batch
                _, loss = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, images=images)
                avg_loss += loss.detach().item()
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            print("Epoch {}/{}, avg loss: {:.4f}".format(epoch, self.args.num_epochs, avg_loss / len(self.train_data)))

    def multiModal_before_train(self):
        # bert lr
        parameters = []
        params = {'lr': self.args.lr, 'weight_decay': 1e-2}
        params['params'] = []
        for name, param in self.model.named_parameters():
            if 'bert' in name:
                params['params'].append(param)
        parameters.append(params)

        # prompt lr
        params = {'lr': self.args.lr, 'weight_decay': 1e-2}
        params['params'] = []
        for name, param in self.model.named_parameters():
            if 'encoder_conv' in name or 'gates' in name:
                params['params'].append(param)
        parameters.append(params)

        # crf lr
        params = {'lr': 5e-2, 'weight_decay': 1e-2}
        params['params'] = []
        for name, param in self.model.named_parameters():
            if 'crf' in name or name.startswith('fc'):
                params['params'].append(param)
        parameters.append(params)

        self.optimizer = optim.AdamW(parameters)

        for name, par in self.model.named_parameters():  # freeze resnet
            if 'image_model' in name:
                par.requires_grad = False

        warmup = max(1, int(self.args.warmup_ratio * self.train_num_steps))
        total = self.train_num_steps
        self.scheduler = optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))


if __name__ == '__main__':
    torch.manual_seed(1234)
    args = Args()
    train_dataloader = DataLoader(make_tweets(800, args, seed=1234), batch_size=args.batch_size, shuffle=True)
    model = HMNeTNERModel(LABELS, args)
    trainer = NERTrainer(train_data=train_dataloader, model=model, args=args)
    probe = lossprobe.attach(model)  # lossprobe: the one added line
    trainer.train()
