using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Embedded;

/// <summary>How the journal names each step of the procedure: by what it does and where, which the
/// procedure determines (not by the order in which concurrent steps happened to end).</summary>
public static class StepKeys
{
    public const string Measure = "measure";
    public const string Introspect = "introspect";
    public const string HandOver = "hand-over";
    public const string SwitchOver = "switch-over";

    public static string StartPaging(string host, int round = 1) => $"start-paging:{host}{Round(round)}";

    public static string Transfer(Assignment a, int round = 1) => $"transfer:{a.Host}:{a.FirstPfn}{Round(round)}";

    public static string ReleasePaging(string host) => $"release-paging:{host}";

    public static string ReleaseSource(bool vmLeft) => vmLeft ? "release-source:left" : "release-source:stays";

    /// <summary>A step done again because a destination lost the VM (round 2 on) is another step.</summary>
    private static string Round(int round) => round > 1 ? $"#{round}" : "";
}
