# Linear regression y = 2*x + 4 + noise for x = 0..99, trained by full-batch gradient descent
# (StackOverflow 43636736, TensorFlow-Program-Bugs IPS-15), ported from TF1 graph code to Keras.
import keras
import numpy as np

np.random.seed(20180130)

T = 100
noise = 10 * np.random.random(size=T).astype(np.float32)
x = np.array([np.arange(T), np.ones(T)]).astype(np.float32)
w = np.array([[2, 4]]).astype(np.float32)
y = w.dot(x) + noise

# Yhat = W X with W = ones([1, 2]): the second input row is the constant 1 (the intercept)
model = keras.Sequential([
    keras.Input(shape=(2,)),
    keras.layers.Dense(1, use_bias=False, kernel_initializer="ones"),
])


def half_mse(y_true, y_pred):
    # MSE = (1 / (2T)) * sum((Y - Yhat)^2)
    return 0.5 * keras.ops.mean(keras.ops.square(y_true - y_pred))


model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss=half_mse)
history = model.fit(x.T, y.T, batch_size=T, epochs=100, shuffle=False, verbose=0)
for mse in history.history["loss"][::10]:
    print(mse)
