"""Every diagnosis code lossprobe can emit: the public contract.

Codes are tag values in trackers (``lossprobe.diagnosis.<code>``): never rename one.
Each entry says how bad it is, what it means in one sentence, and ranked likely
causes and fixes. The wording is ours; the domain facts come from the seed articles
(why loss will not fall, why it suddenly rises, the train/val table, 87.3365, 0.6931).

Example::

    from lossprobe.catalog import CATALOG
    CATALOG["softmax_overflow"].fixes[0]
"""
from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {"healthy": 0, "info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Diagnosis:
    code: str
    severity: str
    meaning: str
    causes: tuple[str, ...]
    fixes: tuple[str, ...]


def _d(code, severity, meaning, causes, fixes) -> Diagnosis:
    assert severity in SEVERITIES, severity
    return Diagnosis(code, severity, meaning, tuple(causes), tuple(fixes))


_ENTRIES = [
    _d("nan_loss", "critical",
       "The training loss became NaN or infinite, so every update from here on is garbage.",
       ["learning rate high enough that weights overflow",
        "log or division of zero inside a hand-written loss (log(0), x/0)",
        "NaN or Inf already present in the input batch or labels",
        "fp16 overflow without loss scaling"],
       ["lower the learning rate (try 10x smaller) and add gradient clipping",
        "use the framework's fused, numerically stable loss (cross-entropy on logits) instead of log(softmax)",
        "check the batch that produced it for NaN/Inf; add an epsilon to logs and divisions",
        "under mixed precision, use a gradient scaler"]),
    _d("nonfinite_gradients", "critical",
       "Some gradients are NaN or Inf; the first layer where they appear is named in the evidence.",
       ["an operation whose backward is undefined at the current value (sqrt(0), log(0), norm of a zero vector)",
        "activations or loss overflowed in the forward pass",
        "learning rate so high the weights blew up"],
       ["inspect the named layer's forward for sqrt/log/division near zero and add an epsilon",
        "clip gradients and lower the learning rate",
        "run one step under the framework's anomaly detection to get the exact operation"]),
    _d("nonfinite_inputs", "critical",
       "A training batch contained NaN or Inf values before the model ever touched it.",
       ["missing values in the data set encoded as NaN", "a preprocessing step divided by zero (std of a constant feature)",
        "corrupt records or a bad augmentation"],
       ["clean or impute missing values before training", "guard normalisation against zero variance",
        "assert torch.isfinite(batch).all() in the data pipeline while debugging"]),
    _d("softmax_overflow", "critical",
       "Logits are so large that softmax gives exactly 0 for the true class: the loss pins at "
       "-ln(FLT_MIN) = 87.3365 in fp32 (or the logits already saturate softmax to exactly 0/1).",
       ["learning rate too high, weights and logits grow without bound",
        "weight initialisation too large for the depth",
        "unnormalised inputs (raw 0-255 pixels) feeding the first layer",
        "a frozen BatchNorm whose statistics do not match the data"],
       ["lower the learning rate", "initialise with smaller weights (He/Glorot) or add normalisation layers",
        "normalise the inputs", "compute the loss from logits with a fused log-softmax cross-entropy, never log(softmax(x))"]),
    _d("chance_level_loss", "warning",
       "The loss sits at ln(C) for C classes (0.6931 for two, 2.3026 for ten): the model predicts the uniform distribution and has learned nothing.",
       ["labels do not match inputs (shuffled separately, wrong column)", "the output layer is disconnected, zeroed or frozen",
        "learning rate far too low or far too high", "all ReLUs dead so the logits are constant"],
       ["check a few (input, label) pairs by eye", "overfit one small batch: a sound model drives its loss to ~0",
        "check that gradients reach the last layer and the optimizer holds its parameters", "try a learning rate 10x up and 10x down"]),
    _d("exploding_gradients", "critical",
       "The gradient norm has grown by orders of magnitude over recent steps.",
       ["learning rate too high", "deep or recurrent network without normalisation or clipping",
        "poor initialisation (weights too large)", "a loss that is unbounded for some samples"],
       ["clip the gradient norm (e.g. to 1.0)", "lower the learning rate or add warm-up",
        "add normalisation layers / residual connections", "re-initialise with He/Glorot scaling"]),
    _d("vanishing_gradients", "warning",
       "Gradients at the first layers are orders of magnitude smaller than at the last layers, so early layers barely learn.",
       ["deep stacks of sigmoid/tanh that saturate", "initialisation too small for the depth",
        "no residual connections or normalisation"],
       ["use ReLU-family activations", "use He/Glorot initialisation", "add BatchNorm/LayerNorm or skip connections"]),
    _d("frozen_parameters", "warning",
       "Some trainable parameters never change: they get no gradient, or the optimizer does not hold them.",
       ["the parameter is not used in the forward pass (dead branch)", "the optimizer was built before the layer was added or from a subset of parameters",
        "a .detach() or no-grad block cuts the graph above the layer",
        "layers kept in a plain Python list or dict, so the module does not register them"],
       ["pass model.parameters() to the optimizer after building the whole model",
        "set requires_grad=False on parameters you mean to freeze, so the intent is explicit",
        "look for detach()/no_grad between the layer and the loss",
        "keep sub-layers in nn.ModuleList / nn.ModuleDict (paddle.nn.LayerList)"]),
    _d("dead_relu", "warning",
       "A large share of ReLU units output zero for every sample, step after step: they no longer learn.",
       ["learning rate too high knocked biases strongly negative", "initialisation or bias shift that puts most pre-activations below zero",
        "unnormalised inputs"],
       ["lower the learning rate", "use LeakyReLU/GELU or a small positive bias init",
        "use He initialisation and normalise the inputs", "add BatchNorm before the activation"]),
    _d("saturated_activations", "warning",
       "Sigmoid or tanh outputs sit at their bounds, where their gradient is nearly zero.",
       ["pre-activations far too large (large weights or unnormalised inputs)", "learning rate too high"],
       ["normalise inputs and use Glorot initialisation", "add normalisation before the activation", "prefer ReLU-family activations in hidden layers"]),
    _d("loss_plateau", "warning",
       "The training loss stopped falling while still well above what the model reached or should reach.",
       ["the learning rate is too high to settle into a minimum, or too low to make progress",
        "batch size too large (too little gradient noise) or model capacity too small",
        "a saddle region or a bottleneck (dead units, vanishing gradients)"],
       ["lower the learning rate (or decay it) and/or reduce the batch size",
        "check the gradient and activation diagnoses for a bottleneck", "increase model capacity"]),
    _d("loss_divergence", "critical",
       "The training loss is trending upward: optimisation is moving away from a minimum.",
       ["learning rate too high (often right after warm-up or a schedule step)",
        "a bug in the loss sign or in the data pipeline", "numerical instability building up"],
       ["lower the learning rate and add gradient clipping", "check the loss sign and that labels match inputs",
        "restart from the last good checkpoint with a smaller step size"]),
    _d("loss_spike", "warning",
       "The loss jumped far outside its recent noise band in one step.",
       ["an outlier or mislabelled batch", "learning rate too high for the current curvature",
        "Adam's second-moment estimate collapsing after a long quiet phase"],
       ["find and inspect the batch at that step", "clip gradients", "lower the learning rate or raise Adam's epsilon"]),
    _d("loss_oscillation", "warning",
       "The loss swings up and down by a large amount without a downward trend.",
       ["learning rate too high", "batch size too small (very noisy gradients)", "unshuffled data cycling through classes"],
       ["lower the learning rate or use a decaying schedule", "increase the batch size", "shuffle the data every epoch"]),
    _d("learning_rate_too_high", "warning",
       "Each update changes the weights by far more than ~1e-3 of their size, which is usually unstable.",
       ["learning rate set too high for the optimizer (SGD and Adam need very different values)", "no warm-up for a large model"],
       ["lower the learning rate by 10x", "add warm-up", "use a learning-rate finder"]),
    _d("learning_rate_too_low", "warning",
       "Each update changes the weights by far less than ~1e-3 of their size while the loss is not falling.",
       ["learning rate too small", "a schedule that decayed too early", "gradients vanishing before they reach the weights"],
       ["raise the learning rate by 10x", "check the schedule", "check for vanishing gradients"]),
    _d("overfitting", "warning",
       "Training loss keeps falling while validation loss has stopped improving or rises.",
       ["model too large for the data", "too little regularisation or augmentation", "training too long"],
       ["stop early at the best validation loss", "add weight decay, dropout or augmentation", "get more data or shrink the model"]),
    _d("validation_anomaly", "warning",
       "Validation loss falls while training loss does not: the two sets do not measure the same thing, which points at the data.",
       ["validation data leaks into or overlaps the training set", "train and validation are preprocessed differently",
        "labels of the training set are noisy or wrong"],
       ["check the split for duplicates and leakage", "apply the same preprocessing to both sets", "audit training labels"]),
    _d("unshuffled_data", "warning",
       "Batches hold far fewer distinct labels than the data set does: the data arrives sorted.",
       ["shuffle=False in the data loader", "a sampler or dataset sorted by class"],
       ["shuffle the training data every epoch (DataLoader(shuffle=True))"]),
    _d("unnormalized_inputs", "warning",
       "Input values are far from a normalised range (e.g. raw 0-255 pixels or unscaled features).",
       ["missing normalisation / standardisation step", "normalisation applied to the validation set only"],
       ["scale inputs to roughly zero mean and unit variance (or to [0, 1])", "fit the scaler on the training set and apply it everywhere"]),
    _d("label_problem", "critical",
       "The targets cannot be right for this output: class indices outside the output's range, fractional class labels, every target the same value, or targets of another shape that the loss broadcasts.",
       ["wrong label column or off-by-one class indices (1..C instead of 0..C-1)", "the label array was overwritten or broadcast",
        "more classes in the data than units in the output layer",
        "predictions squeezed to (B,) against targets of shape (B, 1): the loss compares every prediction with every target"],
       ["print the unique labels and the output width", "re-map labels to 0..C-1", "rebuild the output layer with one unit per class",
        "make predictions and targets the same shape before the loss"]),
    _d("double_softmax", "warning",
       "The model's outputs are already probabilities but go into a loss that applies softmax itself.",
       ["a Softmax layer at the end of the model combined with CrossEntropyLoss (which expects logits)"],
       ["remove the final softmax and feed logits to the loss", "or use NLLLoss on log-probabilities"]),
    _d("over_regularization", "warning",
       "The weights keep shrinking while the training loss stays high: regularisation is winning over the data.",
       ["weight decay or L2 penalty far too strong", "dropout too high"],
       ["reduce weight decay by 10x", "lower dropout", "start without regularisation and add it once the model overfits"]),
    _d("bad_initialization", "warning",
       "At the start of training, activation scale collapses or explodes from the first layers to the last.",
       ["initial weights far too small or too large for the depth", "all-zero or constant initialisation"],
       ["use He (ReLU) or Glorot (tanh/sigmoid) initialisation", "add normalisation layers"]),
    _d("frozen_batchnorm", "warning",
       "BatchNorm layers run in eval mode during training steps, so they use stale statistics.",
       ["model.eval() called (e.g. after validation) without model.train() again", "a layer frozen on purpose for fine-tuning on a different data distribution"],
       ["call model.train() at the start of every training epoch", "if freezing is deliberate, make sure the running statistics match the new data"]),
    _d("converged", "info",
       "The loss is flat at a low level and the gradients are small: training has finished learning. This is healthy, not stuck.",
       ["training reached a minimum"],
       ["stop training or decay the learning rate for a final improvement", "judge further progress on the validation set"]),
    _d("output_activation_mismatch", "warning",
       "The model's last activation does not fit its loss: a one-unit softmax (always exactly 1), sigmoid outputs "
       "under a categorical cross-entropy, softmax outputs under a binary cross-entropy, a squashing activation "
       "before a loss that applies its own, or an unbounded head under a loss that expects probabilities.",
       ["a softmax kept on a one-unit output when the task became binary",
        "an output activation copied from another task (sigmoid for multi-class, softmax for multi-label)",
        "sigmoid or softmax left in the model while the loss already applies it (BCEWithLogitsLoss, CrossEntropyLoss, from_logits=True)",
        "a linear or ReLU output fed to a loss that expects probabilities (BCELoss, from_logits=False)"],
       ["one output unit with sigmoid (or no activation and a logits loss) for a binary task",
        "C output units with softmax and categorical cross-entropy for C exclusive classes; sigmoid per unit for multi-label",
        "remove the final activation when the loss takes logits, or tell the loss (from_logits=True)",
        "end with the activation the loss expects (sigmoid before BCELoss, softmax before a probability cross-entropy)"]),
    _d("zero_gradients", "critical",
       "Every gradient is exactly zero: nothing the model does changes the loss, so it cannot learn at all.",
       ["a one-unit softmax (its output is always exactly 1, so its gradient is 0)",
        "the loss is computed from something detached from the model (argmax, .detach(), a NumPy round trip)",
        "every unit of a layer is dead (ReLU) or saturated, so no signal flows back",
        "the loss does not depend on the prediction (a constant or a bug in a custom loss)"],
       ["check the output layer: sigmoid for one unit, softmax only for two or more",
        "compute the loss from the model's raw output tensor, not from argmax or a detached copy",
        "check the dead_relu and saturation findings, and the initialisation",
        "backpropagate one batch by hand and print each parameter's gradient norm"]),
    _d("unscaled_targets", "warning",
       "Regression targets are orders of magnitude away from the scale the outputs start at, so the first updates "
       "are huge and the loss is dominated by the scale rather than the pattern.",
       ["targets in raw units (prices, counts, 1e5-1e8) fed to a freshly initialised network",
        "a target scaler fitted but never applied, or applied to the inputs only"],
       ["standardise the targets (subtract the mean, divide by the std) and invert the scaling on predictions",
        "or predict log(target) for positive targets spanning several orders of magnitude",
        "initialise the output bias at the targets' mean"]),
    _d("stale_gradients", "critical",
       "Gradients are carried over from one optimizer step to the next: the loop never clears them, so each update "
       "adds all previous gradients again.",
       ["optimizer.zero_grad() (or model.zero_grad(), opt.clear_grad()) missing from the training loop",
        "zero_grad() called on a different optimizer or model than the one being stepped"],
       ["call optimizer.zero_grad() once per step, before loss.backward()",
        "for deliberate gradient accumulation, clear the gradients after each optimizer.step()"]),
    _d("excessive_dropout", "warning",
       "A dropout layer drops most of its inputs in training, which starves the layers after it of signal.",
       ["a keep-probability (TensorFlow 1's keep_prob=0.9) passed as a drop rate (nn.Dropout(p=0.9), Dropout(0.9))",
        "dropout raised far past the usual 0.1-0.5 to fight overfitting"],
       ["pass the drop probability: p = 1 - keep_prob (0.1 for keep_prob 0.9)",
        "use rates of 0.1-0.5 and add other regularisation if the model still overfits"]),
    _d("rank_divergence", "warning",
       "One data-parallel rank's loss is far from the others': the ranks are not seeing comparable data.",
       ["a sampler that does not shard or shuffle per rank (DistributedSampler missing or set_epoch not called)",
        "one rank reads a different or corrupt data shard"],
       ["use DistributedSampler and call set_epoch every epoch", "check the named rank's data shard"]),
]

CATALOG: dict[str, Diagnosis] = {d.code: d for d in _ENTRIES}


def severity_of(code: str) -> str:
    return CATALOG[code].severity


def worst(severities) -> str:
    """Health word for a collection of severities: healthy | warning | critical."""
    best = "healthy"
    for s in severities:
        if SEVERITY_RANK.get(s, 0) > SEVERITY_RANK[best]:
            best = s
    return best
