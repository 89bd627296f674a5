// fmrecall._core: the pybind11 layer only. Converts numpy arrays to the core's plain structs,
// checks what the core would otherwise trust, and releases the GIL around long work. The GIL is
// always released before a call into the core that takes the model's lock (Model::mu), so a thread
// waiting for that lock never holds the GIL (no deadlock with Python threads).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

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

// CSR arrays as the core's view, after the checks that keep the core from reading out of bounds.
// With `rows` (the rows a call will touch, e.g. one training chunk of a permutation), only those
// rows' indptr entries are checked: O(len(rows)), not O(all rows), so streaming an epoch through a
// large (memory-mapped) Dataset in chunks costs O(chunk) per call; rows outside it are never read.
Csr make_csr(const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
             const std::optional<arr<float>>& val, const std::optional<arr<float>>& label,
             const arr<int64_t>* rows_used = nullptr) {
  if (indptr.ndim() != 1 || indptr.size() < 1) throw InputError("indptr must be a 1-d array of length rows + 1");
  const int64_t rows = indptr.size() - 1;
  const int64_t nnz = field.size();
  if (feat.size() != nnz) throw InputError("fields and features must have the same length");
  if (val && val->size() != nnz) throw InputError("values must have the same length as features");
  if (label && label->size() != rows) throw InputError("labels must have one entry per row");
  const int64_t* ip = indptr.data();
  if (ip[0] != 0) throw InputError("indptr[0] must be 0");
  if (ip[rows] != nnz) throw InputError("indptr[-1] must equal the number of nodes");
  if (rows_used) {
    const int64_t* o = rows_used->data();
    for (int64_t i = 0; i < rows_used->size(); ++i) {
      const int64_t r = o[i];
      if (r < 0 || r >= rows) throw InputError("row order out of range");
      if (ip[r] < 0 || ip[r + 1] < ip[r] || ip[r + 1] > nnz)
        throw InputError("indptr must be non-decreasing within [0, nnz] (row " + std::to_string(r) + ")");
    }
  } else {
    for (int64_t r = 0; r < rows; ++r)
      if (ip[r + 1] < ip[r]) throw InputError("indptr must be non-decreasing (row " + std::to_string(r) + ")");
  }
  Csr c;
  c.indptr = ip;
  c.field = field.data();
  c.feat = feat.data();
  c.val = val ? val->data() : nullptr;
  c.label = label ? label->data() : nullptr;
  c.rows = rows;
  return c;
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
  std::unique_ptr<AliasTable> sampler;
  const int64_t* pos_ptr = nullptr;
  const int32_t* pos_items = nullptr;
};

Csr csr_of(const CsrArgs& a, std::vector<py::object>& keep) {
  keep.push_back(std::get<0>(a));
  keep.push_back(std::get<1>(a));
  keep.push_back(std::get<2>(a));
  if (std::get<3>(a)) keep.push_back(*std::get<3>(a));
  return make_csr(std::get<0>(a), std::get<1>(a), std::get<2>(a), std::get<3>(a), std::nullopt);
}

void check_range(const arr<int32_t>& a, int64_t n, const char* what) {
  const int32_t* p = a.data();
  for (int64_t i = 0; i < a.size(); ++i)
    if (p[i] < 0 || p[i] >= n)
      throw InputError(std::string(what) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                       " is out of range [0, " + std::to_string(n) + ")");
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
            [&] {
              return stream_libsvm(path, field_of_feature.data(), field_of_feature.size(), s, python_signalled);
            },
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
      py::arg("path"), py::arg("indptr"), py::arg("fields"), py::arg("features"), py::arg("values"),
      py::arg("labels"));
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
             Factored& D = fd->D;
             D.users = csr_of(users, fd->keep);
             D.items = csr_of(items, fd->keep);
             if (context) D.context = csr_of(*context, fd->keep);
             D.n_events = ev_user.size();
             if (ev_item.size() != D.n_events) throw InputError("event user and item arrays differ in length");
             if (context && D.context.rows != D.n_events)
               throw InputError("context must have one row per event");
             check_range(ev_user, D.users.rows, "event user");
             check_range(ev_item, D.items.rows, "event item");
             fd->keep.push_back(ev_user);
             fd->keep.push_back(ev_item);
             D.ev_user = ev_user.data();
             D.ev_item = ev_item.data();
             if (labels) {
               if (labels->size() != D.n_events) throw InputError("labels must have one entry per event");
               fd->keep.push_back(*labels);
               D.label = labels->data();
             }
             if (sample_weights) {
               if (sample_weights->size() != D.items.rows)
                 throw InputError("sampling weights must have one entry per item row");
               fd->sampler = std::make_unique<AliasTable>(sample_weights->data(), sample_weights->size());
             }
             if (pos_ptr && pos_items) {
               if (pos_ptr->size() != D.users.rows + 1) throw InputError("pos_ptr must have users + 1 entries");
               fd->keep.push_back(*pos_ptr);
               fd->keep.push_back(*pos_items);
               fd->pos_ptr = pos_ptr->data();
               fd->pos_items = pos_items->data();
             }
             if (hist_feat) {
               if (hist_feat->size() != D.items.rows) throw InputError("hist_feat must have one entry per item row");
               fd->keep.push_back(*hist_feat);
               D.hist_field = hist_field;
               D.hist_feat = hist_feat->data();
             }
             if (cold.size() > 8) throw InputError("at most 8 cold-start fields");
             for (const auto& [f, j, rate] : cold) {
               if (!(rate >= 0.f && rate <= 1.f)) throw InputError("cold-start rates must be in [0, 1]");
               D.cold_field.push_back(f);
               D.cold_feat.push_back(j);
               D.cold_rate.push_back(rate);
             }
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
        AliasTable t(weights.data(), weights.size());
        py::array_t<int32_t> out(n);
        int32_t* o = out.mutable_data();
        py::gil_scoped_release nogil;
        Rng rng(seed);
        for (int64_t i = 0; i < n; ++i) o[i] = t.sample(rng);
        return out;
      },
      py::arg("weights"), py::arg("n"), py::arg("seed"), "Draws from the alias table training samples with.");

  py::class_<SplitLayout>(m, "SplitLayout")
      .def_readonly("dim", &SplitLayout::dim)
      .def_readonly("k", &SplitLayout::k)
      .def("blocks",
           [](const SplitLayout& L) {
             // (offset, kind, query field or -1, item field or -1), in vector order
             std::vector<std::tuple<int64_t, std::string, int32_t, int32_t>> out;
             if (L.off_ss >= 0) out.emplace_back(L.off_ss, "ss", -1, -1);
             for (int32_t f = 0; f < L.F; ++f) {
               if (L.off_sa[f] >= 0) out.emplace_back(L.off_sa[f], "sa", f, -1);
               if (L.off_bs[f] >= 0) out.emplace_back(L.off_bs[f], "bs", -1, f);
               for (int32_t g = 0; g < L.F; ++g)
                 if (L.off_ab[static_cast<size_t>(f) * L.F + g] >= 0)
                   out.emplace_back(L.off_ab[static_cast<size_t>(f) * L.F + g], "ab", f, g);
             }
             std::sort(out.begin(), out.end());
             return out;
           });

  py::class_<Model>(m, "Model")
      .def(py::init([](int64_t n, int32_t F, int32_t k, const arr<uint8_t>& aware,
                       const std::optional<arr<int32_t>>& aware_row, int64_t rows, float init_std, uint64_t seed,
                       bool normalize, const std::optional<arr<uint8_t>>& seen) {
             auto M = std::make_unique<Model>();
             std::vector<uint8_t> a(aware.data(), aware.data() + aware.size());
             std::vector<int32_t> ar;
             if (aware_row) {
               ar.assign(aware_row->data(), aware_row->data() + aware_row->size());
               for (int32_t r : ar)
                 if (r < -1 || r >= rows) throw InputError("aware_row entries must be -1 or a row of W");
             }
             M->normalize = normalize;
             if (seen && seen->size() != n) throw InputError("seen must have one entry per feature");
             py::gil_scoped_release nogil;
             M->allocate(n, F, k, std::move(a), std::move(ar), rows, init_std, seed);
             if (seen) M->zero_unseen(seen->data(), seen->size());  // absent from training: start at 0
             return M;
           }),
           py::arg("n_features"), py::arg("n_fields"), py::arg("k"), py::arg("aware"), py::arg("aware_row"),
           py::arg("aware_rows"), py::arg("init_std"), py::arg("seed"), py::arg("normalize"),
           py::arg("seen") = py::none())
      .def_property_readonly("n_features",
                             [](const Model& M) {  // under the lock: grow_features changes it
                               py::gil_scoped_release nogil;
                               return M.features();
                             })
      .def_readonly("n_fields", &Model::F)
      .def_readonly("k", &Model::k)
      .def_readonly("kp", &Model::kp)
      .def_property_readonly("aware_rows",
                             [](const Model& M) {
                               py::gil_scoped_release nogil;
                               return M.aware_rows();
                             })
      .def_readonly("normalize", &Model::normalize)
      .def(
          "train",
          [](Model& M, const arr<int64_t>& indptr, const arr<int32_t>& field, const arr<int32_t>& feat,
             const std::optional<arr<float>>& val, const arr<float>& label, const arr<int64_t>& order, int loss,
             float eta, float l2_lin, float l2_fac, int threads) {
            const Csr c = make_csr(indptr, field, feat, val, label, &order);  // checks only `order`'s rows
            const int64_t* o = order.data();
            if (loss != 0 && loss != 1) throw InputError("this loss needs factored (Interactions) data");
            const Hyper h{eta, l2_lin, l2_fac};
            const int t = resolve_threads(threads);
            py::gil_scoped_release nogil;
            return train_rows(M, c, o, order.size(), static_cast<Loss>(loss), h, t);
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
            if (side.size() != M.F) throw InputError("side must have one entry per field");
            py::gil_scoped_release nogil;
            return make_layout(M, side.data());
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
          [](Model& M, const FactoredData& fd, const arr<int64_t>& order, int loss, int negatives, int candidates,
             uint64_t seed, float eta, float l2_lin, float l2_fac, int threads) {
            const int64_t* o = order.data();
            for (int64_t i = 0; i < order.size(); ++i)
              if (o[i] < 0 || o[i] >= fd.D.n_events) throw InputError("event order out of range");
            if (loss < 0 || loss > 2) throw InputError("unknown loss");
            if (negatives < 0) throw InputError("negatives must be >= 0");
            if (negatives > 0 && !fd.sampler) throw InputError("negative sampling needs sampling weights");
            if (static_cast<Loss>(loss) == Loss::bpr && negatives == 0)
              throw InputError("the BPR loss needs sampled negatives (negatives >= 1)");
            if (negatives == 0 && !fd.D.label) throw InputError("labelled training needs labels");
            Sampling S;
            S.negatives = negatives;
            S.candidates = std::max(candidates, 1);
            S.sampler = fd.sampler.get();
            S.pos_ptr = fd.pos_ptr;
            S.pos_items = fd.pos_items;
            S.seed = seed;
            const Hyper h{eta, l2_lin, l2_fac};
            const int t = resolve_threads(threads);
            EpochStats st;
            {
              py::gil_scoped_release nogil;
              st = train_factored(M, fd.D, o, order.size(), static_cast<Loss>(loss), S, h, t);
            }
            return py::make_tuple(st.loss, st.terms);
          },
          py::arg("data"), py::arg("order"), py::arg("loss"), py::arg("negatives"), py::arg("candidates"),
          py::arg("seed"), py::arg("eta"),
          py::arg("l2_linear"), py::arg("l2_factors"), py::arg("threads"))
      .def(
          "score_factored",
          [](const Model& M, const FactoredData& fd, const std::optional<arr<int32_t>>& items, int threads) {
            if (items) {
              if (items->size() != fd.D.n_events) throw InputError("items must have one entry per event");
              check_range(*items, fd.D.items.rows, "items");
            }
            py::array_t<float> out(fd.D.n_events);
            float* o = out.mutable_data();
            const int32_t* it = items ? items->data() : nullptr;
            const int t = resolve_threads(threads);
            {
              py::gil_scoped_release nogil;
              score_factored(M, fd.D, it, o, t);
            }
            return out;
          },
          py::arg("data"), py::arg("items"), py::arg("threads"))
      .def(
          "grow_rows",
          [](Model& M, const arr<int32_t>& features, float init_std, uint64_t seed) {
            py::gil_scoped_release nogil;
            return M.grow_rows(features.data(), features.size(), init_std, seed);
          },
          py::arg("features"), py::arg("init_std"), py::arg("seed"))
      .def(
          "grow_features",
          [](Model& M, int64_t n_new, const std::optional<arr<uint8_t>>& seen, float init_std, uint64_t seed) {
            if (seen && seen->size() != n_new) throw InputError("seen must have one entry per new feature");
            const uint8_t* s = seen ? seen->data() : nullptr;
            py::gil_scoped_release nogil;
            M.grow_features(n_new, s, init_std, seed);
          },
          py::arg("n_new"), py::arg("seen"), py::arg("init_std"), py::arg("seed"))
      .def("snapshot", [](Model& M) {
        py::gil_scoped_release nogil;
        M.snapshot();
      })
      .def("restore", [](Model& M) {
        py::gil_scoped_release nogil;
        M.restore();
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
             d["v"] = w.has_v ? py::object(to_numpy(std::move(w.v), {w.n, w.k})) : py::object(py::none());
             d["W"] = w.has_W ? py::object(to_numpy(std::move(w.W), {w.m, w.F, w.k})) : py::object(py::none());
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
