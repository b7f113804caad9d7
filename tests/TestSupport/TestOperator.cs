using SEmigrate.Contracts.Migration;
using SEmigrate.Sealing;

namespace SEmigrate.TestSupport;

/// <summary>The tests' operator: one signing key per test process (made 0600 in a temporary folder), which
/// every worker and orchestrator the process starts pins and signs with (the settings go to the process's
/// environment, which they inherit).</summary>
public static class TestOperator
{
    private static readonly Lazy<(string File, byte[] PublicKey)> Key = new(() =>
    {
        var file = Path.Combine(Directory.CreateTempSubdirectory("semigrate-operator-").FullName, "operator.key");
        OperatorKey.Create(file);
        using var key = OperatorKey.Load(file);
        Environment.SetEnvironmentVariable("SEMIGRATE__Trust__OperatorKeyFile", file);
        Environment.SetEnvironmentVariable("SEMIGRATE__Trust__OperatorKey", Convert.ToBase64String(key.PublicKey));
        return (file, key.PublicKey);
    });

    public static string KeyFile => Key.Value.File;

    public static byte[] PublicKey => Key.Value.PublicKey;

    /// <summary>Makes this process (and what it starts) pin and sign with the tests' operator key.</summary>
    public static void Use() => _ = Key.Value;

    /// <summary>The request as the operator signs it, valid for an hour, with <paramref name="pinned"/> keys.</summary>
    public static MigrationRequest Sign(MigrationRequest request, IReadOnlyList<PinnedHost> pinned, TimeSpan? validFor = null)
    {
        using var key = OperatorKey.Load(KeyFile);
        return OperatorSignatures.Sign(request with { Pinned = pinned, NotAfter = DateTimeOffset.UtcNow + (validFor ?? TimeSpan.FromHours(1)) }, key);
    }

    public static StopVm Sign(StopVm stop)
    {
        using var key = OperatorKey.Load(KeyFile);
        return OperatorSignatures.Sign(stop, key, TimeSpan.FromHours(1));
    }

    public static DrainOrder Sign(DrainOrder order)
    {
        using var key = OperatorKey.Load(KeyFile);
        return OperatorSignatures.Sign(order, key);
    }
}
