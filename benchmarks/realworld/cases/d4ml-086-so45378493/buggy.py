# StackOverflow 45378493 (Defects4ML #86): a Conv1D binary classifier on length-10 one-hot
# sequences whose single output unit goes through a softmax under binary cross-entropy.
import numpy as np
import tensorflow as tf
from keras.models import Sequential
from keras.layers import Dense, Dropout, Activation, Conv1D, BatchNormalization, LeakyReLU, Flatten
from keras.callbacks import ReduceLROnPlateau


def softmax(x):
    # Keras 2.x (the post's version): binary_crossentropy received the softmax probabilities.
    # TF's own softmax keeps that meaning under Keras 3, which would otherwise hand the loss
    # the logits behind a softmax activation and so turn this head into a sigmoid.
    return tf.nn.softmax(x)


# stand-in for the post's data: one-hot sequences of 4 letters, 10 long; the label says whether
# the sequence holds more 'G'/'C' than 'A'/'T'
rng = np.random.default_rng(45378493)
letters = rng.integers(0, 4, size=(6001, 10))
sequences = np.eye(4, dtype=np.float32)[letters]
labels = ((letters >= 2).sum(axis=1) > 5).astype(np.float32).reshape(-1, 1)
X_train, y_train = sequences[:6000], labels[:6000]
X_test, y_test = sequences[6000:], labels[6000:]

model = Sequential()
model.add(Conv1D(input_shape=(10, 4),
                 filters=16,
                 kernel_size=4,
                 padding='same'))
model.add(BatchNormalization())
model.add(LeakyReLU())
model.add(Dropout(0.2))
model.add(Conv1D(filters=8,
                 kernel_size=4,
                 padding='same'))
model.add(BatchNormalization())
model.add(LeakyReLU())
model.add(Dropout(0.2))

model.add(Flatten())

model.add(Dense(64))
model.add(BatchNormalization())
model.add(LeakyReLU())

model.add(Dense(1))
model.add(Activation(softmax))

reduce_lr = ReduceLROnPlateau(monitor='val_accuracy', factor=0.9, patience=30, min_lr=0.000001, verbose=0)

model.compile(optimizer='adam',
              loss='binary_crossentropy',
              metrics=['accuracy'])

history = model.fit(X_train, y_train,
                    epochs=10,
                    batch_size=128,
                    verbose=0,
                    validation_data=(X_test, y_test),
                    callbacks=[reduce_lr],
                    shuffle=True)

print(history.history['loss'][-1], history.history['accuracy'][-1])
y_pred = model.predict(X_test, verbose=0)
