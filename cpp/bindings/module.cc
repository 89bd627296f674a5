// fmrecall._core: the pybind11 layer only. Converts numpy arrays to the core's plain pointers and
// sizes, keeps arrays the core points into alive, and releases the GIL around calls into the core;
// every check of the data and every computation is the core's (cpp/src). The GIL is always released
// before a call into the core that takes the model's lock (Model::mu), so a thread waiting for that
// lock never holds the GIL (no deadlock with Python threads).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cmath>

#include "fmrecall/interactions.h"
#include "fmrecall/parse.h"
#include "fmrecall/split.h"
#include "fmrecall/train.h"

namespace py = pybind11;
using namespace fmrecall;

namespace {

template <class T>
using arr = py::array_t<T, py::array::c_style>;

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape = {}) {
  auto* p = new std::vector<T>(std::move(v));
  py::capsule owner(p, [](void* q) { delete static_cast<std::vector<T>*>(q); });
  if (shape.empty()) shape = {static_cast<py::ssize_t>(p->size())};
  return py::array_t<T>(shape, p->data(), owner);
}

// CSR arrays as the core's view (the core checks them: make_csr in train.h).
Csr make_csr(const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
             const std::optional<arr<float>>& val, const std::optional<arr<float>>& label,
             const arr<int64_t>* rows_used = nullptr) {
  if (indptr.ndim() != 1) throw InputError("indptr must be a 1-d array of length rows + 1");
  return fmrecall::make_csr(indptr.data(), indptr.size(), field.data(), field.size(), feat.data(), feat.size(),
                            val ? val->data() : nullptr, val ? val->size() : 0, label ? label->data() : nullptr,
                            label ? label->size() : 0, rows_used ? rows_used->data() : nullptr,
                            rows_used ? rows_used->size() : 0);
}

py::dict parsed_to_dict(Parsed&& p) {
  py::dict d;
  d["n_fields"] = p.max_field + 1;
  d["n_features"] = p.max_feat + 1;
  d["indptr"] = to_numpy(std::move(p.indptr));
  d["fields"] = to_numpy(std::move(p.field));
  d["features"] = to_numpy(std::move(p.feat));
  d["values"] = p.has_values ? py::object(to_numpy(std::move(p.val))) : py::object(py::none());
  d["labels"] = to_numpy(std::move(p.label));
  return d;
}

// Polled by the parsers between 16 MiB chunks, without the GIL: takes it briefly to run Python's
// signal handlers (Ctrl-C). True (stop) leaves the exception set; the caller re-raises it.
bool python_signalled() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// Runs a parse without the GIL; a Cancelled parse re-raises the pending Python exception
// (KeyboardInterrupt, or whatever a sink raised).
template <class F>
auto run_parse(F&& f, std::exception_ptr* sink_error = nullptr) {
  try {
    py::gil_scoped_release nogil;
    return f();
  } catch (const Cancelled&) {
    if (sink_error && *sink_error) std::rethrow_exception(*sink_error);
    throw py::error_already_set();
  }
}

// A Sink that hands each block to a Python callable as the dict parse_libffm returns (indptr from
// 0 within the block). An exception in the callable stops the parse and is re-raised.
Sink python_sink(const py::function& fn, std::exception_ptr& error) {
  return [&fn, &error](Parsed& block) {
    py::gil_scoped_acquire gil;
    try {
      fn(parsed_to_dict(std::move(block)));
    } catch (...) {
      error = std::current_exception();
      throw Cancelled();
    }
  };
}

using CsrArgs = std::tuple<arr<int64_t>, arr<int32_t>, arr<int32_t>, std::optional<arr<float>>>;

// Factored training data with its numpy arrays kept alive (the core only holds pointers).
struct FactoredData {
  std::vector<py::object> keep;
  Factored D;
};

Csr csr_of(const CsrArgs& a, std::vector<py::object>& keep) {
  keep.push_back(std::get<0>(a));
  keep.push_back(std::get<1>(a));
  keep.push_back(std::get<2>(a));
  if (std::get<3>(a)) keep.push_back(*std::get<3>(a));
  return make_csr(std::get<0>(a), std::get<1>(a), std::get<2>(a), std::get<3>(a), std::nullopt);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fmrecall C++ core (FM / FFM / hybrid training, parsing, query/item split)";
  py::register_exception<InputError>(m, "InputError", PyExc_ValueError);
  static py::exception<FileMissing> file_missing(m, "FileMissing", PyExc_FileNotFoundError);
  (void)file_missing;

  m.def("best_arch", &best_arch, "Instruction set the kernels run with on this CPU (generic | avx2 | avx512).");
  m.def("max_threads", []() { return omp_get_max_threads(); });
  m.attr("MAX_THREADS") = kMaxThreads;

  py::enum_<Loss>(m, "Loss", "The training losses (loss.h); bpr needs implicit factored data.")
      .value("logistic", Loss::logistic)
      .value("squared", Loss::squared)
      .value("bpr", Loss::bpr);
  py::implicitly_convertible<py::int_, Loss>();  // a plain int (the enum's value) is accepted too

  m.def(
      "parse_libffm",
      [](const std::string& path) {
        Parsed p = run_parse([&] { return parse_libffm(path, python_signalled); });
        return parsed_to_dict(std::move(p));
      },
      py::arg("path"));
  m.def(
      "parse_libsvm",
      [](const std::string& path, const arr<int32_t>& field_of_feature) {
        Parsed p = run_parse(
            [&] { return parse_libsvm(path, field_of_feature.data(), field_of_feature.size(), python_signalled); });
        return parsed_to_dict(std::move(p));
      },
      py::arg("path"), py::arg("field_of_feature"));
  m.def(
      "stream_libffm",
      [](const std::string& path, const py::function& sink) {
        std::exception_ptr error;
        const Sink s = python_sink(sink, error);
        return run_parse([&] { return stream_libffm(path, s, python_signalled); }, &error);
      },
      py::arg("path"), py::arg("sink"),
      "Parses in one pass, calling sink(block) for the rows of each 16 MiB chunk; returns the row count.");
  m.def(
      "stream_libsvm",
      [](const std::string& path, const arr<int32_t>& field_of_feature, const py::function& sink) {
        std::exception_ptr error;
        const Sink s = python_sink(sink, error);
        return run_parse(
            [&] { return stream_libsvm(path, field_of_feature.data(), field_of_feature.size(), s, python_signalled); },
            &error);
      },
      py::arg("path"), py::arg("field_of_feature"), py::arg("sink"));
  m.def(
      "write_libffm",
      [](const std::string& path, const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
         const std::optional<arr<float>>& val, const std::optional<arr<float>>& label) {
        const Csr c = make_csr(indptr, field, feat, val, label);
        py::gil_scoped_release nogil;
        write_libffm(path, c);
      },
      py::arg("path"), py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"), py::arg("labels"));
  m.def(
      "permutation",
      [](int64_t n, uint64_t seed) {
        py::array_t<int64_t> out(n);
        int64_t* o = out.mutable_data();
        py::gil_scoped_release nogil;
        permutation(n, seed, o);
        return out;
      },
      py::arg("n"), py::arg("seed"));

  py::class_<FactoredData>(m, "FactoredData")
      .def(py::init([](const CsrArgs& users, const CsrArgs& items, const std::optional<CsrArgs>& context,
                       const arr<int32_t>& ev_user, const arr<int32_t>& ev_item,
                       const std::optional<arr<float>>& labels, const std::optional<arr<double>>& sample_weights,
                       const std::optional<arr<int64_t>>& pos_ptr, const std::optional<arr<int32_t>>& pos_items,
                       int32_t hist_field, const std::optional<arr<int32_t>>& hist_feat,
                       const std::vector<std::tuple<int32_t, int64_t, float>>& cold) {
             auto fd = std::make_unique<FactoredData>();
             std::vector<py::object>& keep = fd->keep;
             Factored& D = fd->D;
             D.users = csr_of(users, keep);
             D.items = csr_of(items, keep);
             if (context) D.context = csr_of(*context, keep);
             keep.insert(keep.end(), {ev_user, ev_item});
             D.set_events(ev_user.data(), ev_user.size(), ev_item.data(), ev_item.size());
             if (labels) {
               keep.push_back(*labels);
               D.set_labels(labels->data(), labels->size());
             }
             if (sample_weights) D.set_sample_weights(sample_weights->data(), sample_weights->size());
             if (pos_ptr && pos_items) {
               keep.insert(keep.end(), {*pos_ptr, *pos_items});
               D.set_positives(pos_ptr->data(), pos_ptr->size(), pos_items->data());
             }
             if (hist_feat) {
               keep.push_back(*hist_feat);
               D.set_history(hist_field, hist_feat->data(), hist_feat->size());
             }
             D.set_cold(cold);
             return fd;
           }),
           py::arg("users"), py::arg("items"), py::arg("context"), py::arg("ev_user"), py::arg("ev_item"),
           py::arg("labels"), py::arg("sample_weights"), py::arg("pos_ptr"), py::arg("pos_items"),
           py::arg("hist_field") = -1, py::arg("hist_feat") = py::none(),
           py::arg("cold") = std::vector<std::tuple<int32_t, int64_t, float>>{})
      .def_property_readonly("n_events", [](const FactoredData& f) { return f.D.n_events; });

  m.def(
      "sample_items",
      [](const arr<double>& weights, int64_t n, uint64_t seed) {
        py::array_t<int32_t> out(n);
        int32_t* o = out.mutable_data();
        py::gil_scoped_release nogil;
        sample_items(weights.data(), weights.size(), n, seed, o);
        return out;
      },
      py::arg("weights"), py::arg("n"), py::arg("seed"), "Draws from the alias table training samples with.");

  py::class_<SplitLayout>(m, "SplitLayout")
      .def_readonly("dim", &SplitLayout::dim)
      .def_readonly("k", &SplitLayout::k)
      .def(
          "blocks",
          [](const SplitLayout& L) {
            std::vector<std::tuple<int64_t, std::string, int32_t, int32_t>> out;
            for (const LayoutBlock& b : layout_blocks(L))
              out.emplace_back(b.offset, b.kind, b.query_field, b.item_field);
            return out;
          },
          "(offset, kind, query field or -1, item field or -1) of every block, in vector order.");

  py::class_<Model>(m, "Model")
      .def(
          py::init([](int64_t n, int32_t F, int32_t k, const arr<uint8_t>& aware,
                      const std::optional<arr<int32_t>>& aware_row, int64_t aware_rows, float init_std, uint64_t seed,
                      bool normalize, const std::optional<arr<int32_t>>& single_row, int64_t single_rows, float scale) {
            if (!(scale > 0.f) || !std::isfinite(scale)) throw InputError("scale must be finite and > 0");
            auto M = std::make_unique<Model>();
            std::vector<uint8_t> a(aware.data(), aware.data() + aware.size());
            std::vector<int32_t> ar, sr;
            if (aware_row) ar.assign(aware_row->data(), aware_row->data() + aware_row->size());
            if (single_row) sr.assign(single_row->data(), single_row->data() + single_row->size());
            py::gil_scoped_release nogil;
            M->allocate(n, F, k, std::move(a), std::move(ar), aware_rows, init_std, seed, normalize, std::move(sr),
                        single_rows);
            M->scale = scale;  // set once, before any other thread can see the model
            return M;
          }),
          py::arg("n_features"), py::arg("n_fields"), py::arg("k"), py::arg("aware"), py::arg("aware_row"),
          py::arg("aware_rows"), py::arg("init_std"), py::arg("seed"), py::arg("normalize"),
          py::arg("single_row") = py::none(), py::arg("single_rows") = 0, py::arg("scale") = 1.f)
      .def_property_readonly("n_features",
                             [](const Model& M) {  // under the lock: grow_features changes it
                               py::gil_scoped_release nogil;
                               return M.current_features();
                             })
      .def_readonly("n_fields", &Model::F)
      .def_readonly("k", &Model::k)
      .def_readonly("kp", &Model::kp)
      .def_property_readonly("single_rows",
                             [](const Model& M) {
                               py::gil_scoped_release nogil;
                               return M.current_single_rows();
                             })
      .def_property_readonly("aware_rows",
                             [](const Model& M) {
                               py::gil_scoped_release nogil;
                               return M.current_aware_rows();
                             })
      .def_readonly("normalize", &Model::normalize)
      .def_readonly("scale", &Model::scale)
      .def(
          "train",
          [](Model& M, const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
             const std::optional<arr<float>>& val, const arr<float>& label, const arr<int64_t>& order, Loss loss,
             float eta, float l2_lin, float l2_fac, int threads) {
            const Csr c = make_csr(indptr, field, feat, val, label, &order);  // checks only `order`'s rows
            const int t = resolve_threads(threads);
            py::gil_scoped_release nogil;
            return train_rows(M, c, order.data(), order.size(), loss, Hyper{eta, l2_lin, l2_fac}, t);
          },
          py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"), py::arg("labels"),
          py::arg("order"), py::arg("loss"), py::arg("eta"), py::arg("l2_linear"), py::arg("l2_factors"),
          py::arg("threads"))
      .def(
          "predict",
          [](const Model& M, const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
             const std::optional<arr<float>>& val, int threads) {
            const Csr c = make_csr(indptr, field, feat, val, std::nullopt);
            const int t = resolve_threads(threads);
            py::array_t<float> out(c.rows);
            float* o = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              predict_rows(M, c, o, t);
            }
            return out;
          },
          py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"), py::arg("threads"))
      .def(
          "split_layout",
          [](const Model& M, const arr<uint8_t>& side) {
            py::gil_scoped_release nogil;
            return make_layout(M, side.data(), side.size());
          },
          py::arg("side"))
      .def(
          "query_vectors",
          [](const Model& M, const SplitLayout& L, const arr<int64_t>& indptr, const arr<int32_t>& field,
             const arr<int32_t>& feat, const std::optional<arr<float>>& val, int threads) {
            const Csr c = make_csr(indptr, field, feat, val, std::nullopt);
            const int t = resolve_threads(threads);
            py::array_t<float> q({static_cast<py::ssize_t>(c.rows), static_cast<py::ssize_t>(L.dim)});
            py::array_t<float> b(c.rows);
            float* qp = q.mutable_data();
            float* bp = b.mutable_data();
            {
              py::gil_scoped_release nogil;
              query_vectors(M, L, c, qp, bp, t);
            }
            return py::make_tuple(q, b);
          },
          py::arg("layout"), py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"),
          py::arg("threads"))
      .def(
          "item_vectors",
          [](const Model& M, const SplitLayout& L, const arr<int64_t>& indptr, const arr<int32_t>& field,
             const arr<int32_t>& feat, const std::optional<arr<float>>& val, int threads) {
            const Csr c = make_csr(indptr, field, feat, val, std::nullopt);
            const int t = resolve_threads(threads);
            py::array_t<float> p({static_cast<py::ssize_t>(c.rows), static_cast<py::ssize_t>(L.dim)});
            float* pp = p.mutable_data();
            {
              py::gil_scoped_release nogil;
              item_vectors(M, L, c, pp, t);
            }
            return p;
          },
          py::arg("layout"), py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"),
          py::arg("threads"))
      .def(
          "train_factored",
          [](Model& M, const FactoredData& fd, const arr<int64_t>& order, Loss loss, int negatives, int candidates,
             uint64_t seed, float eta, float l2_lin, float l2_fac, int threads) {
            const int t = resolve_threads(threads);
            EpochStats st;
            {
              py::gil_scoped_release nogil;
              st = train_factored(M, fd.D, order.data(), order.size(), loss, Sampling{negatives, candidates, seed},
                                  Hyper{eta, l2_lin, l2_fac}, t);
            }
            return py::make_tuple(st.loss, st.terms);
          },
          py::arg("data"), py::arg("order"), py::arg("loss"), py::arg("negatives"), py::arg("candidates"),
          py::arg("seed"), py::arg("eta"), py::arg("l2_linear"), py::arg("l2_factors"), py::arg("threads"))
      .def(
          "score_factored",
          [](const Model& M, const FactoredData& fd, const std::optional<arr<int32_t>>& items, int threads) {
            const int t = resolve_threads(threads);
            py::array_t<float> out(fd.D.n_events);
            float* o = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              score_factored(M, fd.D, items ? items->data() : nullptr, items ? items->size() : 0, o, t);
            }
            return out;
          },
          py::arg("data"), py::arg("items"), py::arg("threads"))
      .def(
          "grow_rows",
          [](Model& M, const arr<int32_t>& single, const arr<int32_t>& aware, float init_std, uint64_t seed) {
            py::gil_scoped_release nogil;
            return M.grow_rows(single.data(), single.size(), aware.data(), aware.size(), init_std, seed);
          },
          py::arg("single"), py::arg("aware"), py::arg("init_std"), py::arg("seed"))
      .def(
          "grow_features",
          [](Model& M, int64_t n_new) {
            py::gil_scoped_release nogil;
            M.grow_features(n_new);
          },
          py::arg("n_new"))
      .def(
          "finite",
          [](const Model& M) {
            py::gil_scoped_release nogil;
            return M.finite();
          },
          "Whether every weight (bias, linear, latent vectors; not the AdaGrad state) is finite.")
      .def("snapshot",
           [](Model& M) {
             py::gil_scoped_release nogil;
             M.snapshot();
           })
      .def("drop_snapshot",
           [](Model& M) {
             py::gil_scoped_release nogil;
             M.drop_snapshot();
           })
      .def("restore",
           [](Model& M) {
             py::gil_scoped_release nogil;
             M.restore();
           })
      .def(
          "average",
          [](Model& M, float beta) {
            py::gil_scoped_release nogil;
            M.average(beta);
          },
          py::arg("beta"), "avg <- beta avg + (1 - beta) weights (the first call copies the weights).")
      .def(
          "swap_average",
          [](Model& M) {
            py::gil_scoped_release nogil;
            M.swap_average();
          },
          "The weights and their average trade places.")
      .def("drop_average",
           [](Model& M) {
             py::gil_scoped_release nogil;
             M.drop_average();
           })
      .def("get_weights",
           [](const Model& M) {
             Weights w;
             {
               py::gil_scoped_release nogil;
               w = M.get_weights();  // one consistent copy, under the model's shared lock
             }
             py::dict d;
             d["bias"] = w.bias;
             d["linear"] = to_numpy(std::move(w.linear));
             d["v"] = w.has_v ? py::object(to_numpy(std::move(w.v), {w.single_rows, w.k})) : py::object(py::none());
             d["single_row"] =
                 w.has_single_map ? py::object(to_numpy(std::move(w.single_row))) : py::object(py::none());
             d["W"] = w.has_W ? py::object(to_numpy(std::move(w.W), {w.aware_rows, w.F, w.k})) : py::object(py::none());
             d["aware_row"] = w.has_rows ? py::object(to_numpy(std::move(w.aware_row))) : py::object(py::none());
             return d;
           })
      .def(
          "set_weights",
          [](Model& M, float bias, const arr<float>& linear, const std::optional<arr<float>>& v,
             const std::optional<arr<float>>& W) {
            py::gil_scoped_release nogil;  // the arrays stay alive: the caller holds them
            M.set_weights(bias, linear.data(), linear.size(), v ? v->data() : nullptr, v ? v->size() : 0,
                          W ? W->data() : nullptr, W ? W->size() : 0);
          },
          py::arg("bias"), py::arg("linear"), py::arg("v"), py::arg("W"));
}
