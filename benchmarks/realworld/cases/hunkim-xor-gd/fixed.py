# Lab 9 XOR (hunkim/DeepLearningZeroToAll, lab-09-4-xor_tensorboard.py): a 2-2-1 sigmoid network
# trained on the four XOR rows by full-batch gradient descent, ported from TF1 graph code to Keras.
import keras
import numpy as np
import tensorflow as tf

learning_rate = 0.01

x_data = [[0, 0],
          [0, 1],
          [1, 0],
          [1, 1]]
y_data = [[0],
          [1],
          [1],
          [0]]
x_data = np.array(x_data, dtype=np.float32)
y_data = np.array(y_data, dtype=np.float32)

# W1, b1, W2, b2 all drawn from random_normal
normal = keras.initializers.RandomNormal(stddev=1.0)
model = keras.Sequential([
    keras.Input(shape=(2,)),
    keras.layers.Dense(2, activation="sigmoid", kernel_initializer=normal, bias_initializer=normal, name="layer1"),
    keras.layers.Dense(1, activation="sigmoid", kernel_initializer=normal, bias_initializer=normal, name="layer2"),
])


def cost(Y, hypothesis):
    return -tf.reduce_mean(Y * tf.math.log(hypothesis) + (1 - Y) * tf.math.log(1 - hypothesis))


model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=cost, metrics=["binary_accuracy"])
# one full-batch step per iteration: the four rows repeated, in order, four to a batch
repeat = 1000
model.fit(np.tile(x_data, (repeat, 1)), np.tile(y_data, (repeat, 1)), batch_size=4, epochs=3,
          shuffle=False, verbose=2)
print(model.predict(x_data, verbose=0))
