# ShyamPoovaiah/FacialKeypointsDetection, src/1_single_hidden_layer.py: 30 facial keypoint
# coordinates regressed from 96x96 grey faces by a small fully connected network.
import numpy as np
from sklearn.utils import shuffle

# the 15 keypoints (x, y) of an average face in the Kaggle data, in pixels of a 96x96 image
MEAN_KEYPOINTS = np.array([
    66, 37, 30, 37, 60, 38, 73, 38, 36, 38, 23, 38, 57, 29, 80, 30, 39, 29, 16, 30,
    48, 62, 63, 76, 33, 76, 48, 72, 48, 82], dtype=np.float32)


def load(test=False, cols=None):
    """Stand-in for the Kaggle training.csv: faces drawn as bright spots at jittered keypoints
    on a noisy background, 2140 complete rows as after the original's dropna()."""
    rng = np.random.default_rng(2140)
    n = 2140
    keypoints = MEAN_KEYPOINTS + rng.normal(0, 3, size=(n, 30)) + np.repeat(rng.normal(0, 4, size=(n, 2)), 15, axis=1)
    rows, cols_ = np.mgrid[0:96, 0:96]
    images = rng.uniform(0, 80, size=(n, 96, 96))
    for image, points in zip(images, keypoints):
        for x, y in points.reshape(-1, 2):
            image += 170 * np.exp(-((cols_ - x) ** 2 + (rows - y) ** 2) / 8.0)
    X = np.clip(images, 0, 255).reshape(n, 9216) / 255.  # scale pixel values to [0, 1]
    X = X.astype(np.float32)

    y = (keypoints - 48) / 48  # scale target coordinates to [-1, 1]
    X, y = shuffle(X, y, random_state=42)  # shuffle train data
    y = y.astype(np.float32)
    return X, y


X, y = load()
print("X.shape == {}; X.min == {:.3f}; X.max == {:.3f}".format(
    X.shape, X.min(), X.max()))
print("y.shape == {}; y.min == {:.3f}; y.max == {:.3f}".format(
    y.shape, y.min(), y.max()))

# Create the keras model
from keras.models import Sequential
from keras.layers import Dense
from keras.optimizers import Adam

# Version - Single Hidden Layer
model = Sequential()
model.add(Dense(50, input_shape=(9216,)))  # Input Batches of 96x96 input pixels per batch
model.add(Dense(100))
model.add(Dense(30))  # 30 to represent 30 facial keypoints.

#   Compile the model.  Minimize mean squared error
model.compile(Adam(learning_rate=0.1), 'mean_squared_error')

model.fit(X, y, epochs=5, verbose=2)
#   Get loss on test data
eval_result = model.evaluate(X, y, verbose=0)
print("\n\nTest loss:", eval_result)
