# A two-convolution MNIST classifier whose last fully connected layer keeps the ReLU of the
# hidden ones (StackOverflow 43239467, TensorFlow-Program-Bugs IPS-11), ported from TF1 to Keras.
import keras

from benchmarks.realworld.standins import mnist

(x_train, y_train), _ = mnist(n_train=6000)


def conv_layer(size_out, name="conv"):
    return [keras.layers.Conv2D(size_out, 5, padding="same", activation="relu", name=name,
                                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
                                bias_initializer=keras.initializers.Constant(0.1)),
            keras.layers.MaxPooling2D(2, strides=2, padding="same")]


def fc_layer(size_out, name="fc", activation="relu"):
    return keras.layers.Dense(size_out, activation=activation, name=name,
                              kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
                              bias_initializer=keras.initializers.Constant(0.1))


def mnist_model(learning_rate):
    model = keras.Sequential(
        [keras.Input(shape=(784,)), keras.layers.Reshape((28, 28, 1))]
        + conv_layer(32, "conv1") + conv_layer(64, "conv2")
        + [keras.layers.Flatten(), fc_layer(1024, "fc1"), fc_layer(10, "fc2", activation=None)])
    # xent = reduce_mean(softmax_cross_entropy_with_logits(logits, labels))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["categorical_accuracy"])
    # 2000 steps of mnist.train.next_batch(100) in the original
    model.fit(x_train, y_train, batch_size=100, epochs=1, verbose=2)


mnist_model(1e-3)
