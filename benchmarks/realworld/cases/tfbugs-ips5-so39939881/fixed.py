# Simple linear regression y = w*x + b on 8 noisy points, trained by full-batch gradient descent
# (StackOverflow 39939881, TensorFlow-Program-Bugs IPS-5), ported from TF1 graph code to Keras.
import random

import keras
import numpy as np

random.seed(20180130)
np.random.seed(20180130)

_w = random.uniform(-8, 8)
_b = random.uniform(-8, 8)
print(_w, _b)
size = 8
X = [random.uniform(-8, 8) for _ in range(size)]
Y = [_w * x + _b + random.uniform(-1, 1) for x in X]
x = np.array(X, dtype=np.float32).reshape(-1, 1)
y = np.array(Y, dtype=np.float32).reshape(-1, 1)

# y_ = x * W + B with W, B initialised to zero
model = keras.Sequential([
    keras.Input(shape=(1,)),
    keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros"),
])
model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-1), loss="mse")
# one step on the whole data per iteration, 100 iterations
history = model.fit(x, y, batch_size=size, epochs=100, shuffle=False, verbose=0)
for los in history.history["loss"][::10]:
    print("loss %g" % los)
