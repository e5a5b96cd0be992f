"""Training the EchoNet-Dynamic networks on the EchoNet-Dynamic file layout.

``echonet_data`` reads the layout, ``train_seg`` / ``train_ef`` train one network each,
``metrics`` and ``quick_eval`` score them on held-out folders, ``normalisation`` computes the
input mean/std that every weight file carries.
"""
