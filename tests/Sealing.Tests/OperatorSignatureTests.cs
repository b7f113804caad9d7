using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Sealing.Tests;

/// <summary>What the operator signs covers every field a host acts on: change any one and the signature
/// fails; another operator's key never verifies; a key file is made 0600.</summary>
public sealed class OperatorSignatureTests
{
    private static readonly MigrationRequest Request = new(Guid.NewGuid(), Guid.NewGuid(), "web", "h1", new Destination("h3", 1000), [new Destination("h2", 2000)],
        MigrationMode.Semigrate, ["vaultdb"], [new PinnedHost("h3", [1, 2, 3])], DateTimeOffset.UtcNow.AddHours(1));

    public static TheoryData<string> Changes => ["MigrationId", "Vm", "Guest", "Source", "Main", "MainCapacity", "SubHosts", "SubCapacity", "Mode", "PlainProcesses",
        "Pinned", "PinnedKey", "NotAfter"];

    [Theory]
    [MemberData(nameof(Changes))]
    public void A_request_changed_in_any_field_fails_its_signature(string change)
    {
        using var key = OperatorKey.Generate();
        var signed = OperatorSignatures.Sign(Request, key);
        Assert.True(OperatorSignatures.IsSigned(signed, key.PublicKey));
        var changed = change switch
        {
            "MigrationId" => signed with { MigrationId = Guid.NewGuid() },
            "Vm" => signed with { Vm = Guid.NewGuid() },
            "Guest" => signed with { Guest = "db" },
            "Source" => signed with { Source = "h9" },
            "Main" => signed with { Main = signed.Main with { Host = "h9" } },
            "MainCapacity" => signed with { Main = signed.Main with { CapacityPages = 1001 } },
            "SubHosts" => signed with { SubHosts = [.. signed.SubHosts, new Destination("h9", 1)] },
            "SubCapacity" => signed with { SubHosts = [signed.SubHosts[0] with { CapacityPages = 1 }] },
            "Mode" => signed with { Mode = MigrationMode.NoEnc },
            "PlainProcesses" => signed with { PlainProcesses = ["vaultdb", "sshd"] },
            "Pinned" => signed with { Pinned = [.. signed.Pinned!, new PinnedHost("h9", [9])] },
            "PinnedKey" => signed with { Pinned = [signed.Pinned![0] with { HostKey = [1, 2, 4] }] },
            "NotAfter" => signed with { NotAfter = signed.NotAfter!.Value.AddDays(1) },
            _ => throw new ArgumentException(change),
        };
        Assert.False(OperatorSignatures.IsSigned(changed, key.PublicKey), $"{change} is not covered by the signature");
    }

    [Fact]
    public void Every_field_of_a_request_is_in_the_list_above()
    {
        // A field added to MigrationRequest must be signed (and listed above), or be the signature itself or the order.
        var fields = typeof(MigrationRequest).GetProperties().Select(p => p.Name).Except(["Signature", "Order", "EqualityContract"]);
        Assert.All(fields, f => Assert.Contains(Changes, c => c.Data == f));
    }

    [Fact]
    public void Another_operators_signature_and_a_changed_drain_order_fail()
    {
        using var key = OperatorKey.Generate();
        using var other = OperatorKey.Generate();
        Assert.False(OperatorSignatures.IsSigned(OperatorSignatures.Sign(Request, other), key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(Request, key.PublicKey)); // unsigned
        var order = OperatorSignatures.Sign(new DrainOrder("h1", MigrationMode.Semigrate, [], [new PinnedHost("h2", [1]), new PinnedHost("h3", [3])],
            DateTimeOffset.UtcNow.AddHours(1), [], MainHosts: ["h2"]), key);
        Assert.True(OperatorSignatures.IsSigned(order, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(order with { MainHosts = ["h2", "h3"] }, key.PublicKey)); // a pages-only host made main
        Assert.False(OperatorSignatures.IsSigned(order with { MainHosts = null }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(order with { Host = "h2" }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(order with { Hosts = [new PinnedHost("h2", [2])] }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(order with { Mode = MigrationMode.NoEnc }, key.PublicKey));
    }

    [Fact]
    public void A_stop_changed_in_any_field_or_signed_by_another_fails()
    {
        using var key = OperatorKey.Generate();
        using var other = OperatorKey.Generate();
        var stop = OperatorSignatures.Sign(new StopVm(Guid.NewGuid(), Guid.NewGuid(), "h3"), key, TimeSpan.FromHours(1));
        Assert.True(OperatorSignatures.IsSigned(stop, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop with { MigrationId = Guid.NewGuid() }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop with { Vm = Guid.NewGuid() }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop with { Main = "h9" }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop with { NotAfter = stop.NotAfter!.Value.AddDays(1) }, key.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop, other.PublicKey));
        Assert.False(OperatorSignatures.IsSigned(stop with { Signature = null }, key.PublicKey));
    }

    [Fact]
    public void The_operator_key_is_made_0600_once()
    {
        var dir = Directory.CreateTempSubdirectory("semigrate-operator-test-");
        try
        {
            var path = Path.Combine(dir.FullName, "keys", "operator.key");
            Assert.True(OperatorKey.Create(path));
            Assert.False(OperatorKey.Create(path));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            using var key = OperatorKey.Load(path);
            Assert.True(OperatorKey.Verify(key.PublicKey, [1, 2], key.Sign([1, 2])));
            Assert.False(OperatorKey.Verify([1, 2, 3], [1, 2], key.Sign([1, 2]))); // a malformed key is not valid, never a crash
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
