//===- moert.hpp - a thin C++ wrapper over the moe runtime C API -*- C++
//-*-===//
//
// RAII ownership and std::string errors over moert.h; no other dependency.
//
//   std::string error;
//   auto ctx = moert::Context::create("cpu", &error);
//   auto model = moert::Model::load(*ctx, moe_my_model, "w.safetensors",
//   &error); model->run(tokens, hidden, outputs, &error);
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_MOERT_HPP
#define MOERT_MOERT_HPP

#include "moert/moert.h"

#include <memory>
#include <string>

namespace moert {
namespace detail {
/// Moves a status's message into `error` (if given); true on success.
inline bool consume(moert_status status, std::string *error) {
  if (!status)
    return true;
  if (error)
    *error = moert_status_get_message(status);
  moert_status_free(status);
  return false;
}
} // namespace detail

class Context {
public:
  static std::unique_ptr<Context> create(const char *device,
                                         std::string *error) {
    moert_context *ctx = nullptr;
    if (!detail::consume(moert_context_create(device, &ctx), error))
      return nullptr;
    return std::unique_ptr<Context>(new Context(ctx));
  }
  ~Context() { moert_context_free(ctx); }
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;
  moert_context *get() const { return ctx; }
  int32_t cudaCapability() const {
    return moert_context_get_cuda_capability(ctx);
  }

private:
  explicit Context(moert_context *ctx) : ctx(ctx) {}
  moert_context *ctx;
};

class Model {
public:
  static std::unique_ptr<Model> load(Context &ctx,
                                     const moert_compiled_model &compiled,
                                     const std::string &weightsPath,
                                     std::string *error) {
    moert_model *model = nullptr;
    if (!detail::consume(
            moert_model_load(ctx.get(), &compiled, weightsPath.c_str(), &model),
            error))
      return nullptr;
    return std::unique_ptr<Model>(new Model(model));
  }
  ~Model() { moert_model_free(model); }
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  moert_model_info info() const { return moert_model_get_info(model); }
  moert_model *get() const { return model; }
  /// Safe to call from several threads at once.
  bool run(int64_t tokens, const float *hidden, const moert_outputs &outputs,
           std::string *error) {
    return detail::consume(moert_model_run(model, tokens, hidden, &outputs),
                           error);
  }

private:
  explicit Model(moert_model *model) : model(model) {}
  moert_model *model;
};
/// A decoder's KV cache for one sequence.
class Session {
public:
  /// A session of max_positions, or of `capacity` positions if it is > 0.
  static std::unique_ptr<Session> create(Model &model, std::string *error,
                                         int64_t capacity = 0) {
    moert_session *session = nullptr;
    moert_status status =
        capacity > 0 ? moert_session_create_with_capacity(model.get(), capacity,
                                                          &session)
                     : moert_session_create(model.get(), &session);
    if (!detail::consume(status, error))
      return nullptr;
    return std::unique_ptr<Session>(new Session(session));
  }
  ~Session() { moert_session_free(session); }
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Runs `n` tokens at the next positions; logits is [n, vocab_size],
  /// exitLoop (optional) [n].
  bool forward(const int32_t *tokens, int64_t n, float *logits,
               std::string *error, int32_t *exitLoop = nullptr) {
    return detail::consume(
        moert_session_forward(session, tokens, n, logits, exitLoop), error);
  }
  int64_t position() const { return moert_session_position(session); }

private:
  explicit Session(moert_session *session) : session(session) {}
  moert_session *session;
};
} // namespace moert

#endif // MOERT_MOERT_HPP
