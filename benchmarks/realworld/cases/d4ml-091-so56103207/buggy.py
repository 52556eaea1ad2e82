# StackOverflow 56103207 (Defects4ML #91): a small CNN on 28x28 images of 5 classes, stored class
# by class, with the last 20% held out by validation_split.
import numpy as np
from sklearn.datasets import load_digits
from tensorflow.keras.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tensorflow.keras.models import Sequential

model = Sequential()

model.add(Conv2D(filters=32, kernel_size=5, data_format="channels_last", activation="relu", input_shape=(28, 28, 1)))
model.add(MaxPooling2D(data_format="channels_last"))
model.add(Conv2D(filters=16, kernel_size=3, data_format="channels_last", activation="relu"))
model.add(MaxPooling2D(data_format="channels_last"))

model.add(Flatten(data_format="channels_last"))

model.add(Dense(units=128, activation="relu"))
model.add(Dense(units=64, activation="relu"))
model.add(Dense(units=5, activation="softmax"))

model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

# stand-in for the post's x.npy / y.npy: the digits 0-4, upsampled to 28x28, one-hot labels,
# stored sorted by class as the post's files were
digits = load_digits()
keep = np.argsort(digits.target, kind="stable")
keep = keep[digits.target[keep] < 5]
x = np.pad(np.kron(digits.images[keep], np.ones((3, 3))), ((0, 0), (2, 2), (2, 2)))[..., None] / 16.0
y = np.eye(5)[digits.target[keep]]


history = model.fit(x=x, y=y, batch_size=100, epochs=20, validation_split=0.2, verbose=2)
print(history.history["val_accuracy"][-1])
