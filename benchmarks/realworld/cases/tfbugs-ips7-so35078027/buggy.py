# One-hidden-layer MLP on MNIST with a hand-written cross-entropy (StackOverflow 35078027,
# TensorFlow-Program-Bugs IPS-7), ported from TF1 graph code to Keras.
import keras
import tensorflow as tf

from benchmarks.realworld.standins import mnist

(x_train, y_train), _ = mnist()

# h1 = sigmoid(x W_h1); y_ = h1 W_out, both weights drawn from random_normal (stddev 1), no biases
model = keras.Sequential([
    keras.Input(shape=(784,)),
    keras.layers.Dense(512, activation="sigmoid", use_bias=False,
                       kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)),
    keras.layers.Dense(10, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)),
])


def cross_entropy_loss(y, y_):
    cross_entropy = tf.reduce_sum(- y * tf.math.log(y_) - (1 - y) * tf.math.log(1 - y_), 1)
    return tf.reduce_mean(cross_entropy)


model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss=cross_entropy_loss,
              metrics=["categorical_accuracy"])
# 10000 steps of mnist.train.next_batch(100) in the original
model.fit(x_train, y_train, batch_size=100, epochs=2, verbose=2)
