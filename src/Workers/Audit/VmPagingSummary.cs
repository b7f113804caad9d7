using Marten.Events.Aggregation;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>A running VM's paging at its main host, as `semigrate status` shows it: the read model of
/// the VM's stream of VmPaged events (totals, and the last and peak resident memory).</summary>
public sealed record VmPagingSummary(
    Guid Id, string Main, long PagesIn, long BytesIn, long PagesOut, long BytesOut, long ResidentPages, long PeakResidentPages, long BudgetPages,
    double LastPageInP99Ms, long FaultedBytes, long WrittenBackBytes, DateTimeOffset UpdatedAt);

/// <summary>Builds <see cref="VmPagingSummary"/> inline, in the transaction that appends the event.</summary>
public sealed class VmPagingSummaryProjection : SingleStreamProjection<VmPagingSummary, Guid>
{
    public static VmPagingSummary Create(VmPaged e) => Apply(e, new VmPagingSummary(e.Vm, e.Main, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, e.At));

    public static VmPagingSummary Apply(VmPaged e, VmPagingSummary s) => s with
    {
        Main = e.Main,
        PagesIn = s.PagesIn + e.Hosts.Sum(h => h.PagesIn),
        BytesIn = s.BytesIn + e.Hosts.Sum(h => h.BytesIn),
        PagesOut = s.PagesOut + e.Hosts.Sum(h => h.PagesOut),
        BytesOut = s.BytesOut + e.Hosts.Sum(h => h.BytesOut),
        ResidentPages = e.ResidentPages,
        PeakResidentPages = Math.Max(s.PeakResidentPages, e.PeakResidentPages),
        BudgetPages = e.BudgetPages,
        LastPageInP99Ms = e.Hosts.Any(h => h.PagesIn > 0) ? e.PageInP99Ms : s.LastPageInP99Ms,
        FaultedBytes = s.FaultedBytes + e.FaultedBytes,
        WrittenBackBytes = s.WrittenBackBytes + e.WrittenBackBytes,
        UpdatedAt = e.At,
    };
}
