# A logistic regression learning algorithm on MNIST (aymericdamien/TensorFlow-Examples,
# logistic_regression.py, as in Defects4DL Fault1), ported from TF1 graph code to Keras.
import keras
import tensorflow as tf

from benchmarks.realworld.standins import mnist

(x_train, y_train), (x_test, y_test) = mnist()

# Parameters
learning_rate = 0.01
training_epochs = 25
batch_size = 1000

# Set model weights (W, b initialised to zero); Construct model: softmax(x W + b)
model = keras.Sequential([
    keras.Input(shape=(784,)),
    keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros", bias_initializer="zeros"),
])


def cost(y, activation):
    # Minimize error using cross entropy
    return -tf.reduce_sum(y * tf.math.log(activation))


model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate), loss=cost, metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=batch_size, epochs=training_epochs, verbose=2)
print("Optimization Finished!")
print("Accuracy:", model.evaluate(x_test, y_test, verbose=0)[1])
