# AUTOTRAINER demo "Oscillating_Loss_Case": a one-hidden-layer MLP on three 2-D blobs, trained
# one sample at a time by SGD with momentum.
import numpy as np
from sklearn.datasets import make_blobs
from tensorflow.keras import initializers
from tensorflow.keras.layers import Dense
from tensorflow.keras.models import Sequential
from tensorflow.keras.optimizers import Adam
from tensorflow.keras.utils import to_categorical

# the 'simplednn_blob' data set: scaled by 100, split 700/300, then preprocessed by x / 100
X, y = make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=2, random_state=2)
X = X * 100
y = to_categorical(y)
n_train = 700
x, x_val = X[:n_train, :] / 100, X[n_train:, :] / 100
y, y_val = y[:n_train], y[n_train:]

# the demo's model.h5
model = Sequential()
model.add(Dense(50, input_dim=2, activation='relu',
                kernel_initializer=initializers.VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')))
model.add(Dense(3, activation='softmax'))

model.compile(loss='categorical_crossentropy', optimizer=Adam(), metrics=['accuracy'])
model.fit(x, y, batch_size=1, validation_data=(x_val, y_val), epochs=3, verbose=0)
print(model.evaluate(x_val, y_val, verbose=0))
