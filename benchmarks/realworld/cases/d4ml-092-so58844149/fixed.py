# StackOverflow 58844149 (Defects4ML #92): a CNN binary classifier on raw grey images whose
# single output unit goes through a softmax under binary cross-entropy.
import numpy as np
import tensorflow as tf
from keras.models import Sequential
from keras.layers import Dropout, Conv2D, MaxPooling2D, Flatten, Activation, Dense
from tensorflow.keras.preprocessing.image import ImageDataGenerator


def softmax(x):
    # Keras 2.x (the post's version): binary_crossentropy received the softmax probabilities.
    # TF's own softmax keeps that meaning under Keras 3, which would otherwise hand the loss
    # the logits behind a softmax activation and so turn this head into a sigmoid.
    return tf.nn.softmax(x)


# stand-in for the post's images: raw 0-255 grey images; class 1 carries a bright square
rng = np.random.default_rng(58844149)
X_train = rng.integers(0, 255, (500, 64, 64, 1)).astype(np.float32)
y_train = rng.integers(0, 2, (500, 1))
for image, label in zip(X_train, y_train[:, 0]):
    if label:
        r, c = rng.integers(5, 40, size=2)
        image[r:r + 20, c:c + 20] = 255

model = Sequential()
model.add(Conv2D(96, kernel_size=11, padding="same", input_shape=(64, 64, 1), activation='relu'))
model.add(MaxPooling2D(pool_size=(3, 3), strides=(2, 2)))

model.add(Conv2D(128, kernel_size=3, padding="same", activation='relu'))
model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))

model.add(Conv2D(128, kernel_size=3, padding="same", activation='relu'))
model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))

model.add(Flatten())
model.add(Dense(units=300, activation='relu'))
model.add(Dropout(0.2))

model.add(Dense(1))
model.add(Activation("sigmoid"))

model.compile(loss='binary_crossentropy', optimizer='adam', metrics=['accuracy'])

datagen = ImageDataGenerator(
    featurewise_center=True,
    rotation_range=90,
    fill_mode='nearest',
    validation_split=0.2
)

datagen.fit(X_train)

train_generator = datagen.flow(X_train, y_train, batch_size=8)

# fits the model on batches with real-time data augmentation:
history = model.fit(train_generator,
                    steps_per_epoch=len(train_generator) // 8,
                    epochs=5)

print(history.history['accuracy'][-1])
