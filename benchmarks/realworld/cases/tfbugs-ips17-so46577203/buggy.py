# Fit y = A*x^2 + B*x + C to four points by gradient descent on the summed squared error
# (StackOverflow 46577203, TensorFlow-Program-Bugs IPS-17), ported from TF1 graph code to Keras.
import keras
import numpy as np


class Quadratic(keras.layers.Layer):
    """model = A * x**2 + B * x + C, with A, B, C scalar variables initialised to 0."""

    def build(self, input_shape):
        self.A = self.add_weight(shape=(1,), initializer="zeros", name="A")
        self.B = self.add_weight(shape=(1,), initializer="zeros", name="B")
        self.C = self.add_weight(shape=(1,), initializer="zeros", name="C")

    def call(self, x):
        return self.A * (x ** 2) + self.B * x + self.C


model = keras.Sequential([keras.Input(shape=(1,)), Quadratic()])
# loss = reduce_sum(square(model - y)): the sum of the squares over the batch
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
              loss=keras.losses.MeanSquaredError(reduction="sum"))

# training data
x_train = np.array([[0.], [1.], [2.], [3.]], dtype=np.float32)
y_train = np.array([[0.], [1.], [4.], [9.]], dtype=np.float32)
model.fit(x_train, y_train, batch_size=4, epochs=100, shuffle=False, verbose=0)

quad = model.layers[-1]
curr_loss = model.evaluate(x_train, y_train, verbose=0)
print("A: %s B: %s C: %s loss: %s" % (quad.A.numpy(), quad.B.numpy(), quad.C.numpy(), curr_loss))
