"""The dropnet.v1 messages and service stub, generated from proto/dropnet/v1 by protoc and
grpc_python_plugin when the package is built (model_pb2, service_pb2, service_pb2_grpc)."""
