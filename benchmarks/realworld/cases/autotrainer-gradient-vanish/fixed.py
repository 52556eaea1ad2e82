# AUTOTRAINER demo "Gradient_Vanish_Case": eight 5-unit sigmoid layers on the two-circles data.
import numpy as np
from sklearn.datasets import make_circles
from tensorflow.keras import initializers
from tensorflow.keras.layers import Dense
from tensorflow.keras.models import Sequential
from tensorflow.keras.optimizers import Adam

# the 'simplednn_circle' data set: scaled by 100, split 700/300, then preprocessed by x / 100
X, y = make_circles(n_samples=1000, noise=0.1, random_state=1)
X = X * 100
n_train = 700
x, x_val = X[:n_train, :] / 100, X[n_train:, :] / 100
y, y_val = y[:n_train], y[n_train:]


def he_uniform():
    return initializers.VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')


# the demo's model.h5
model = Sequential()
model.add(Dense(5, input_dim=2, activation='selu', kernel_initializer='lecun_uniform', bias_initializer='lecun_uniform'))
for _ in range(7):
    model.add(Dense(5, activation='selu', kernel_initializer='lecun_uniform', bias_initializer='lecun_uniform'))
model.add(Dense(1, activation='sigmoid', kernel_initializer=he_uniform()))

model.compile(loss='binary_crossentropy', optimizer=Adam(learning_rate=0.001), metrics=['accuracy'])
model.fit(x, y, batch_size=128, validation_data=(x_val, y_val), epochs=100, verbose=0)
print(model.evaluate(x_val, y_val, verbose=0))
